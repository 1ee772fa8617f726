#!/usr/bin/env bash
# GPU training-step benchmark, run on an NVIDIA machine with no network (the device
# machine): our step, a Python MLX step and a PyTorch step on the same shapes, one
# process per framework, results as JSON lines plus a markdown table.
#
#   bash scripts/gpu-bundle.sh          # here, with network: fills gpu-bundle/1 and 2
#   bash scripts/bench-gpu.sh [OUT]     # there: OUT defaults to target/bench-gpu-out
#
# Needs on the GPU machine: an NVIDIA driver, python3, and PyTorch built for CUDA 13
# (its site-packages/nvidia/*/lib provide cuBLAS, cuDNN, NVRTC, cuFFT and NCCL for MLX's
# CUDA build too). Our binaries start on MLX's CPU build and move onto the CUDA build by
# themselves (src/backend.rs); nothing here exports a path for them except where the
# CPU build lives, which an installed checkout has in its rpath.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${OUT:-$root/target/bench-gpu-out}}
mkdir -p "$out"
steps=${BENCH_STEPS:-8}
warmup=${BENCH_WARMUP:-10}

models=${BENCH_MODELS:-"vit-ti16:192:12:3 vit-b16:768:12:12"}
batches=${BENCH_BATCHES:-"64 256"}
ours="" ; py=""
for m in $models; do
  IFS=: read -r name hidden depth heads <<<"$m"
  for b in $batches; do
    for mode in full lora; do
      for p in float32 bfloat16; do
        ours="$ours,$name:$b:$mode:$p"
        py="$py,$name:$hidden:$depth:$heads:$b:$mode:$p"
      done
    done
  done
done
ours=${ours#,}; py=${py#,}

# ours: our step as the trainer runs it (compiled forward and backward pass, matrix-product
# parameter gradients); ours-ablation: bf16 rows without those, one at a time; mlx: Python
# MLX; torch: PyTorch eager (strict float32); torch-tf32: its float32 rows with TF32;
# torch-compile: its bf16 rows through torch.compile. The PyTorch ones need no bundle, so a
# first call that carries only gpu-bundle/1 can run them.
log() { echo "$(basename "$0"): $*" >&2; }
frameworks=${BENCH_FRAMEWORKS:-"ours ours-ablation mlx torch torch-tf32 torch-compile"}
has() { case " $frameworks " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
only() { echo "$1" | tr , '\n' | grep ":$2\$" | paste -sd, -; }
if has ours || has ours-ablation || has mlx; then
  . "$root/scripts/gpu-env.sh"
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 --version
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || true
  if has ours; then start "$bin/pipeline" doctor; fi
} 2>&1 | tee -a "$out/machine.txt"

if has ours; then
  log "ours"
  start "$bin/bench_gpu" --device gpu --steps "$steps" --warmup "$warmup" --configs "$ours" \
    | tee "$out/ours.jsonl" || log "our run failed"
fi
if has ours-ablation; then
  bf16=$(only "$ours" bfloat16)
  log "ours, ablation (bf16): plain, then compiled without matrix-product gradients"
  PIPELINE_COMPILE_STEP=0 PIPELINE_PARAM_GRADS=0 start "$bin/bench_gpu" --device gpu --steps "$steps" \
    --warmup "$warmup" --configs "$bf16" | tee "$out/ours-plain.jsonl" || log "ablation failed"
  PIPELINE_COMPILE_STEP=1 PIPELINE_PARAM_GRADS=0 start "$bin/bench_gpu" --device gpu --steps "$steps" \
    --warmup "$warmup" --configs "$bf16" | tee "$out/ours-compiled-only.jsonl" || log "ablation failed"
fi
if has mlx; then
  log "Python MLX"
  PYTHONPATH="$py_home" LD_LIBRARY_PATH="$nvidia_libs" python3 scripts/bench_train_mlx.py \
    --device gpu --steps "$steps" --warmup "$warmup" --configs "$py" | tee "$out/python-mlx.jsonl" || log "Python MLX run failed"
fi
if has torch; then
  log "PyTorch eager"
  python3 scripts/bench_train_torch.py --device cuda --steps "$steps" --warmup "$warmup" \
    --configs "$py" | tee "$out/pytorch.jsonl" || log "PyTorch run failed"
fi
if has torch-tf32; then
  log "PyTorch eager, TF32 (float32 rows)"
  python3 scripts/bench_train_torch.py --device cuda --tf32 --steps "$steps" --warmup "$warmup" \
    --configs "$(only "$py" float32)" | tee "$out/pytorch-tf32.jsonl" || log "PyTorch TF32 run failed"
fi
if has torch-compile; then
  log "PyTorch, torch.compile (bf16 rows)"
  python3 scripts/bench_train_torch.py --device cuda --compile --steps "$steps" --warmup "$warmup" \
    --configs "$(only "$py" bfloat16)" | tee "$out/pytorch-compile.jsonl" || log "torch.compile run failed"
fi
python3 scripts/gpu_bench_table.py "$out" > "$out/gpu-bench.md"
cat "$out/gpu-bench.md"
