#!/usr/bin/env python3
"""Markdown table of scripts/bench-gpu.sh's JSON lines: one row per configuration, our
step against Python MLX and PyTorch, and our bf16 speed-up over our own fp32.

    python3 scripts/gpu_bench_table.py OUT_DIR > OUT_DIR/gpu-bench.md
"""
import json
import os
import sys


def load(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            key = (r.get("name"), r.get("batch"), r.get("mode"), r.get("precision"))
            rows[key] = r
    return rows


def ms(r):
    return r.get("ms_per_step") if r and "error" not in r else None


def fmt(v, unit=""):
    return "-" if v is None else f"{v:.1f}{unit}"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def main():
    out = sys.argv[1]
    f = lambda name: load(os.path.join(out, name))
    ours, mlx, torch = f("ours.jsonl"), f("python-mlx.jsonl"), f("pytorch.jsonl")
    tf32, compiled = f("pytorch-tf32.jsonl"), f("pytorch-compile.jsonl")
    plain, compiled_only = f("ours-plain.jsonl"), f("ours-compiled-only.jsonl")
    machine = ""
    if os.path.exists(os.path.join(out, "machine.txt")):
        machine = open(os.path.join(out, "machine.txt")).read().strip()
    print("# Training step on the GPU: ours vs Python MLX vs PyTorch\n")
    print("Produced by `scripts/bench-gpu.sh` (ms per optimizer step, lower is better; ")
    print("ratios > 1 mean ours is faster). PyTorch eager is strict float32 in the float32 ")
    print("rows; PyTorch TF32 lets its float32 matmuls use TF32 as MLX's do; torch.compile is ")
    print("inductor's default mode over the bf16 rows.\n")
    print("```\n" + machine + "\n```\n")
    print("| model | batch | mode | precision | ours ms | ours img/s | Python MLX ms | "
          "ours vs MLX | PyTorch eager ms | ours vs eager | PyTorch TF32 ms | ours vs TF32 | "
          "torch.compile ms | ours vs compile | ours bf16 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in ours.items():
        name, batch, mode, prec = key
        o = ms(r)
        m, t = ms(mlx.get(key)), ms(torch.get(key))
        t32, tc = ms(tf32.get(key)), ms(compiled.get(key))
        speedup = "-"
        if prec == "bfloat16":
            speedup = ratio(ms(ours.get((name, batch, mode, "float32"))), o)
        ips = None if o is None else batch * 1000.0 / o
        err = f" ({r['error'][:60]})" if "error" in r else ""
        print(f"| {name} | {batch} | {mode} | {prec} | {fmt(o)}{err} | {fmt(ips)} | {fmt(m)} | "
              f"{ratio(m, o)} | {fmt(t)} | {ratio(t, o)} | {fmt(t32)} | {ratio(t32, o)} | "
              f"{fmt(tc)} | {ratio(tc, o)} | {speedup} |")
    if plain or compiled_only:
        print("\n## What each change gives (ours, bf16)\n")
        print("| model | batch | mode | plain ms | + compiled step ms | + matrix-product "
              "parameter gradients ms (ours) | PyTorch eager ms |")
        print("|---|---|---|---|---|---|---|")
        for key, r in plain.items():
            name, batch, mode, prec = key
            print(f"| {name} | {batch} | {mode} | {fmt(ms(r))} | {fmt(ms(compiled_only.get(key)))} | "
                  f"{fmt(ms(ours.get(key)))} | {fmt(ms(torch.get(key)))} |")


if __name__ == "__main__":
    main()
