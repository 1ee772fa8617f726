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
    ours = load(os.path.join(out, "ours.jsonl"))
    mlx = load(os.path.join(out, "python-mlx.jsonl"))
    torch = load(os.path.join(out, "pytorch.jsonl"))
    machine = ""
    if os.path.exists(os.path.join(out, "machine.txt")):
        machine = open(os.path.join(out, "machine.txt")).read().strip()
    print("# Training step on the GPU: ours vs Python MLX vs PyTorch\n")
    print("Produced by `scripts/bench-gpu.sh` (ms per optimizer step, lower is better; ")
    print("ratios > 1 mean ours is faster).\n")
    print("```\n" + machine + "\n```\n")
    print("| model | batch | mode | precision | ours ms | ours img/s | Python MLX ms | "
          "ours vs MLX | PyTorch ms | ours vs PyTorch | ours bf16 vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in ours.items():
        name, batch, mode, prec = key
        o = ms(r)
        m = ms(mlx.get(key))
        t = ms(torch.get(key))
        speedup = "-"
        if prec == "bfloat16":
            speedup = ratio(ms(ours.get((name, batch, mode, "float32"))), o)
        ips = None if o is None else batch * 1000.0 / o
        err = f" ({r['error'][:60]})" if "error" in r else ""
        print(f"| {name} | {batch} | {mode} | {prec} | {fmt(o)}{err} | {fmt(ips)} | {fmt(m)} | "
              f"{ratio(m, o)} | {fmt(t)} | {ratio(t, o)} | {speedup} |")


if __name__ == "__main__":
    main()
