#!/usr/bin/env bash
# The NCCL path on one GPU (the device machine; no network there): a data-parallel
# group of size 1 initialised through MLX's NCCL backend, its collectives on the GPU
# stream, against the same training without a group. What the single-GPU kind allows
# until a two-GPU machine is lent (the two-GPU run itself: scripts/nccl-two-gpu.sh).
#
#   bash scripts/gpu-bundle.sh          # here, with network: fills gpu-bundle/1 and 2
#   bash scripts/nccl-one-gpu.sh [OUT]  # there
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${OUT:-$root/target/nccl-one-gpu-out}}
mkdir -p "$out"
log() { echo "nccl-one-gpu: $*" >&2; }

# MLX's CUDA and CPU builds, laid out by the GPU benchmark's set-up (no benchmark run).
BENCH_FRAMEWORKS=none bash scripts/bench-gpu.sh "$out/setup" >/dev/null 2>&1 || true
work="$root/target/gpu-work"
export PIPELINE_MLX_CUDA_LIB="$root/.mlx/mlx-cuda-13-0.32.2/mlx/lib"
bin="$root/gpu-bundle/2/bin"
p() { LD_LIBRARY_PATH="$work/cpu/mlx/lib" "$bin/pipeline" "$@"; }
cat "$out/setup/machine.txt" > "$out/machine.txt" 2>/dev/null || true

runs="$work/nccl"
rm -rf "$runs" && mkdir -p "$runs"
p convert preset:vit-ti16 --out "$runs/base" --force >/dev/null
train=(train --model "$runs/base" --data examples/quickstart-data --device gpu
  --epochs 1 --batch-size 32 --lr 1e-3 --seed 0 --precision bfloat16 --quiet)

log "one process, no group"
p "${train[@]}" --out "$runs/plain" --distributed off 2>&1 | tee "$out/plain.txt"
log "a group of one through NCCL, variables set by hand"
MLX_RANK=0 MLX_WORLD_SIZE=1 NCCL_HOST_IP=127.0.0.1 NCCL_PORT=12355 PIPELINE_DIST_COLLECTIVES_ON_ONE=1 \
  p "${train[@]}" --out "$runs/nccl" --distributed nccl 2>&1 | tee "$out/nccl.txt"
log "the same through pipeline launch"
PIPELINE_DIST_COLLECTIVES_ON_ONE=1 p launch -n 1 --backend nccl -- "${train[@]}" --out "$runs/launch" 2>&1 | tee "$out/launch.txt"

# Adapters compared tensor by tensor (safetensors read here, no packages needed).
python3 - "$runs" <<'PY' | tee "$out/compare.txt"
import json, math, struct, sys
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n)); data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[k] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out
runs = sys.argv[1]
plain = read(f"{runs}/plain/adapters/adapters.safetensors")
for other in ("nccl", "launch"):
    o = read(f"{runs}/{other}/adapters/adapters.safetensors")
    worst = 0.0
    for k, a in plain.items():
        b = o[k]
        d = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
        s = math.sqrt(sum(x * x for x in a)) or 1.0
        worst = max(worst, d / s)
    print(f"{other} vs plain: {len(plain)} tensors, worst relative difference {worst:.3e}")
PY
for r in plain nccl launch; do
  python3 -c "import json,sys; s=json.load(open('$runs/$r/summary.json')); print('$r', {k: s.get(k) for k in ('device','images_per_second','steps','distributed','allreduce')})" \
    | tee -a "$out/compare.txt" || true
done
