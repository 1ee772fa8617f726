#!/usr/bin/env python3
"""Where a training step's GPU time goes: reads the per-kernel CSV that Nsight Compute
writes with `--csv --page raw --metrics gpu__time_duration.sum` and prints, per step,
the kernel time by kind (GEMM, attention, normalisation, fused elementwise, ...), the
number of launches and the heaviest kernels.

    python3 scripts/ncu_summary.py KERNELS.csv [--marker REGEX --per-step K] [--label L] [--json OUT]

With --marker, the kernel sequence is cut into steps at every K-th launch of a kernel
whose name matches REGEX (a ViT-B/16 step launches the fused attention forward kernel
12 times: `--marker 'sdpa.*fprop' --per-step 12`), and the last complete step is
summarised: the process's set-up (weights drawn and cast, first-step tuning) stays out.
Without it, every kernel of the run is divided by --steps.

The sum of kernel durations is the GPU's busy time with the kernels run one after the
other (Nsight Compute serialises them, each from a cold cache); a step's wall time minus
that sum is about the time the GPU waited for the host.
"""
import argparse
import csv
import json
import re
import sys
from collections import defaultdict

# First match wins; the patterns cover cuBLAS/cuBLASLt/CUTLASS, cuDNN and FlashAttention,
# PyTorch's native kernels, Triton (inductor) and MLX's CUDA backend.
KINDS = [
    # MLX's compiled (fused) elementwise kernels are named after their ops in CamelCase
    # (`mlx::DV2IErfAEV2IBroadcast...`); its own kernels are snake_case (`mlx::copy_v`).
    ("fused elementwise", r"^(void )?mlx::[A-Z]"),
    ("attention", r"fmha|flash|sdpa|attention|cudnn.*(fprop|dgrad|bprop)|xmma_fused"),
    ("gemm", r"gemm|nvjet|cutlass|sm90_xmma|cublas|matmul|\bmm_|_mm\b|splitK|splitk"),
    ("conv", r"conv|implicit"),
    ("layer_norm", r"layer_?norm|layernorm|rms_?norm"),
    ("softmax/loss", r"softmax|cross_entropy|nll|logsumexp"),
    ("optimizer", r"adam|multi_tensor|foreach|fused_adam"),
    ("reduction", r"reduce|_sum|row_reduce|col_reduce|all_reduce"),
    ("copy/cast", r"copy|cast|contiguous|transpose|gather|scatter|concat|cat_|fill|arange"),
    ("fused elementwise", r"compiled|triton_|fused|vectorized_elementwise|elementwise|unrolled"),
    ("elementwise", r"binary|unary|ternary|gelu|erf|add|mul|select|where"),
]


def kind(name):
    low = name.lower()
    for k, pat in KINDS:
        # The MLX rule tells case apart; the others are written in lower case.
        if re.search(pat, name if "mlx::" in pat else low):
            return k
    return "other"


def load(path):
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    reader = csv.DictReader(lines)
    for r in reader:
        name = r.get("Kernel Name") or r.get("Function Name") or ""
        dur = r.get("gpu__time_duration.sum")
        if not name or dur in (None, "", "ns", "nsecond", "usecond", "msecond"):
            continue
        try:
            ns = float(dur.replace(",", ""))
        except ValueError:
            continue
        rows.append((name, ns))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0, help="steps the profiled run made")
    ap.add_argument("--label", default="")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--marker", help="regex of a kernel launched --per-step times a step")
    ap.add_argument("--per-step", type=int, default=1)
    a = ap.parse_args()
    rows = load(a.csv)
    if not rows:
        sys.exit(f"{a.csv}: no kernel rows with gpu__time_duration.sum")
    if a.marker:
        hits = [i for i, (name, _) in enumerate(rows) if re.search(a.marker, name)]
        starts = hits[:: a.per_step]
        if len(starts) < 3:
            sys.exit(f"{a.csv}: fewer than two complete steps by marker {a.marker!r}")
        # The last start opens a step that may have been cut off; the one before it is
        # the last complete step.
        rows = rows[starts[-2]:starts[-1]]
        a.steps = 1.0
    per_kind = defaultdict(lambda: [0.0, 0])
    per_name = defaultdict(lambda: [0.0, 0])
    for name, ns in rows:
        k = kind(name)
        per_kind[k][0] += ns
        per_kind[k][1] += 1
        short = re.sub(r"\(.*", "", name)[:90]
        per_name[(k, short)][0] += ns
        per_name[(k, short)][1] += 1
    total = sum(v[0] for v in per_kind.values())
    s = a.steps
    print(f"## {a.label or a.csv}: {total / s / 1e6:.2f} ms of kernels per step, "
          f"{len(rows) / s:.0f} launches per step\n")
    print("| kind | ms per step | share | launches per step |")
    print("|---|---|---|---|")
    for k, (ns, n) in sorted(per_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {ns / s / 1e6:.2f} | {100 * ns / total:.1f}% | {n / s:.0f} |")
    print(f"\n| heaviest kernels | kind | ms per step | launches per step | mean us |")
    print("|---|---|---|---|---|")
    for (k, name), (ns, n) in sorted(per_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"| `{name}` | {k} | {ns / s / 1e6:.3f} | {n / s:.0f} | {ns / n / 1e3:.1f} |")
    print()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "steps": s, "kernel_ms_per_step": total / s / 1e6,
                       "launches_per_step": len(rows) / s,
                       "kinds": {k: {"ms_per_step": v[0] / s / 1e6, "launches_per_step": v[1] / s}
                                 for k, v in per_kind.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
