#!/usr/bin/env bash
# Data-parallel training on two GPUs over NCCL (the nvidia-h200-x2 device machine; no
# network there), against PyTorch DDP on the same shapes: random ViT-B/16 at 224x224,
# 256 images per GPU, LoRA r8 and full fine-tuning, bf16. Images/s on 1 and 2 GPUs,
# scaling efficiency = 2-GPU img/s / (2 x 1-GPU img/s), and how close the 2-GPU weights
# end to one GPU on the same global batch. Writes OUT/gpu-h200x2.md.
#
#   bash scripts/gpu-bundle.sh          # here, with network: fills gpu-bundle/1 and 2
#   bash scripts/nccl-two-gpu.sh [OUT]  # there (leave NVLink multicast off: NCCL_NVLS_ENABLE=0)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${OUT:-$root/target/nccl-two-gpu-out}}
mkdir -p "$out"
log() { echo "nccl-two-gpu: $*" >&2; }
export NCCL_NVLS_ENABLE=0

BENCH_FRAMEWORKS=none bash scripts/bench-gpu.sh "$out/setup" >/dev/null 2>&1 || true
work="$root/target/gpu-work"
export PIPELINE_MLX_CUDA_LIB="$root/.mlx/mlx-cuda-13-0.32.2/mlx/lib"
bin="$root/gpu-bundle/2/bin"
p() { LD_LIBRARY_PATH="$work/cpu/mlx/lib" "$bin/pipeline" "$@"; }
cp "$out/setup/machine.txt" "$out/machine.txt" 2>/dev/null || true
nvidia-smi topo -m >> "$out/machine.txt" 2>&1 || true

runs="$work/x2"
per_gpu=${PER_GPU_BATCH:-256}
images=${IMAGES:-4096}
mkdir -p "$runs"
# Random 224x224 images as BMP (our loader reads it; nothing to install), two classes.
if [ ! -d "$runs/data/train" ]; then
  python3 - "$runs/data" "$images" <<'PY'
import os, struct, sys
root, n = sys.argv[1], int(sys.argv[2])
w = h = 224
row = (3 * w + 3) // 4 * 4
head = b"BM" + struct.pack("<IHHI", 54 + row * h, 0, 0, 54) + struct.pack(
    "<IiiHHIIiiII", 40, w, h, 1, 24, 0, row * h, 2835, 2835, 0, 0)
for split, count in (("train", n), ("val", 64)):
    for i in range(count):
        d = os.path.join(root, split, f"c{i % 2}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i}.bmp"), "wb") as f:
            f.write(head + os.urandom(row * h))
PY
fi
[ -d "$runs/base" ] || p convert preset:vit-b16 --out "$runs/base" >/dev/null
common=(--model "$runs/base" --data "$runs/data" --device gpu --epochs 1 --lr 1e-4
  --seed 0 --precision bfloat16 --no-augment --quiet)

# Median images/s of the steps after the first two (MLX compiles on the first).
rate() {
  python3 - "$1/metrics.jsonl" <<'PY'
import json, statistics, sys
v = [r["images_per_second"] for r in map(json.loads, open(sys.argv[1])) if "images_per_second" in r]
print(f"{statistics.median(v[2:] or v):.1f}")
PY
}

echo "| mode | GPUs | global batch | ours img/s | PyTorch DDP img/s |" > "$out/table.md"
echo "|---|---|---|---|---|" >> "$out/table.md"
for mode in lora full; do
  log "ours, $mode, 1 GPU"
  p train "${common[@]}" --mode "$mode" --batch-size "$per_gpu" --out "$runs/$mode-1" \
    --distributed off 2>&1 | tee "$out/ours-$mode-1.txt"
  log "ours, $mode, 2 GPUs"
  p launch -n 2 --backend nccl -- train "${common[@]}" --mode "$mode" \
    --batch-size $((2 * per_gpu)) --out "$runs/$mode-2" 2>&1 | tee "$out/ours-$mode-2.txt"
  log "ours, $mode, 1 GPU with the 2-GPU global batch (equality)"
  p train "${common[@]}" --mode "$mode" --batch-size $((2 * per_gpu)) \
    --out "$runs/$mode-1big" --distributed off 2>&1 | tee "$out/ours-$mode-1big.txt"
  cfg="vit-b16:768:12:12:$per_gpu:$mode:bfloat16"
  for n in 1 2; do
    log "PyTorch DDP, $mode, $n GPU(s)"
    python3 -m torch.distributed.run --nproc_per_node "$n" scripts/bench_train_torch.py \
      --device cuda --steps 8 --warmup 3 --configs "$cfg" 2>/dev/null | tail -1 \
      > "$out/torch-$mode-$n.jsonl" || log "PyTorch DDP $n failed"
  done
  o1=$(rate "$runs/$mode-1"); o2=$(rate "$runs/$mode-2")
  t1=$(python3 -c "import json;print(f\"{json.load(open('$out/torch-$mode-1.jsonl'))['images_per_second']:.1f}\")" || echo -)
  t2=$(python3 -c "import json;print(f\"{json.load(open('$out/torch-$mode-2.jsonl'))['images_per_second']:.1f}\")" || echo -)
  echo "| $mode | 1 | $per_gpu | $o1 | $t1 |" >> "$out/table.md"
  echo "| $mode | 2 | $((2 * per_gpu)) | $o2 | $t2 |" >> "$out/table.md"
  python3 -c "
o1,o2='$o1','$o2'; t1,t2='$t1','$t2'
f=lambda a,b: f'{float(b)/(2*float(a)):.3f}' if '-' not in (a,b) else '-'
print(f'| $mode | efficiency | | {f(o1,o2)} | {f(t1,t2)} |')" >> "$out/table.md"
done

# 2 GPUs against 1 GPU on the same global batch: relative difference of the weights.
python3 - "$runs" <<'PY' | tee "$out/equality.txt"
import json, math, struct, sys
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n)); data = f.read()
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in head.items() if k != "__metadata__" and v["dtype"] == "F32"}
runs = sys.argv[1]
for mode, rel in (("lora", "adapters/adapters.safetensors"), ("full", "model/model.safetensors")):
    a, b = read(f"{runs}/{mode}-1big/{rel}"), read(f"{runs}/{mode}-2/{rel}")
    num = sum((x - y) ** 2 for k in a for x, y in zip(a[k], b[k]))
    den = sum(x * x for k in a for x in a[k]) or 1.0
    print(f"{mode}: 2 GPUs vs 1 GPU, same global batch: relative difference {math.sqrt(num / den):.3e} over {len(a)} tensors")
PY
{ cat "$out/machine.txt"; echo; cat "$out/table.md"; echo; cat "$out/equality.txt"; } > "$out/gpu-h200x2.md"
cat "$out/gpu-h200x2.md"
