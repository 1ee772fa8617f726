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
bundle="$root/gpu-bundle"
work="$root/target/gpu-work"
steps=${BENCH_STEPS:-8}
warmup=${BENCH_WARMUP:-10}
log() { echo "bench-gpu: $*" >&2; }

# 1. MLX's CUDA build, reassembled and checked, laid out as `setup.sh --cuda` does.
cuda_home="$root/.mlx/mlx-cuda-13-0.32.2"
if [ ! -f "$cuda_home/mlx/lib/libmlx.so" ]; then
  mkdir -p "$work"
  whl=$(basename "$(ls "$bundle"/1/*.part-00)" .part-00)
  cat "$bundle"/*/"$whl".part-* > "$work/$whl"
  (cd "$work" && sha256sum -c "$bundle/1/mlx_cuda_13.sha256" >/dev/null) \
    || { log "reassembled $whl does not match its checksum"; exit 1; }
  rm -rf "$cuda_home" && mkdir -p "$cuda_home"
  python3 -m zipfile -e "$work/$whl" "$cuda_home"
  rm -f "$work/$whl"
fi
# 2. The CPU build the binaries start on.
cpu_home="$work/cpu"
if [ ! -f "$cpu_home/mlx/lib/libmlx.so" ]; then
  mkdir -p "$cpu_home"
  python3 -m zipfile -e "$bundle"/1/mlx_cpu-*.whl "$cpu_home"
fi
# 3. Python MLX for this Python, on the CUDA build.
py_home="$work/py"
tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ ! -d "$py_home/mlx" ]; then
  mkdir -p "$py_home"
  python3 -m zipfile -e "$bundle"/1/mlx-0.32.2-"$tag"-*.whl "$py_home"
  # The CUDA build compiles kernels at run time against the headers it ships (CCCL),
  # which it finds beside its library.
  cp -r "$cuda_home/mlx/lib" "$cuda_home/mlx/include" "$py_home/mlx/"
  cp -r "$cuda_home/mlx_cuda_13.libs" "$py_home/"
fi
nvidia_libs=$(python3 - <<'PY'
import glob, os, site, sys
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(dirs))
PY
)
log "NVIDIA libraries: ${nvidia_libs:-none}"

export PIPELINE_MLX_CUDA_LIB="$cuda_home/mlx/lib"
# Sixteen configurations in one process outgrow MLX's default CUDA-graph cache (400), after
# which it refuses to go on ("cache thrashing"); same setting for both MLX runs.
export MLX_CUDA_GRAPH_CACHE_SIZE=${MLX_CUDA_GRAPH_CACHE_SIZE:-4000}
bin="$bundle/2/bin"
# The rpath of a build on this machine would point here; a copied binary is told.
start() { LD_LIBRARY_PATH="$cpu_home/mlx/lib" "$@"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 --version
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || true
  start "$bin/pipeline" doctor
} 2>&1 | tee "$out/machine.txt"

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

frameworks=${BENCH_FRAMEWORKS:-"ours mlx torch"}
has() { case " $frameworks " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has ours; then
log "ours"
start "$bin/bench_gpu" --device gpu --steps "$steps" --warmup "$warmup" --configs "$ours" \
  | tee "$out/ours.jsonl" || log "our run failed"
fi
if has mlx; then
log "Python MLX"
PYTHONPATH="$py_home" LD_LIBRARY_PATH="$nvidia_libs" python3 scripts/bench_train_mlx.py \
  --device gpu --steps "$steps" --warmup "$warmup" --configs "$py" | tee "$out/python-mlx.jsonl" || log "Python MLX run failed"
fi
if has torch; then
log "PyTorch"
python3 scripts/bench_train_torch.py --device cuda --steps "$steps" --warmup "$warmup" \
  --configs "$py" | tee "$out/pytorch.jsonl" || log "PyTorch run failed"
fi
python3 scripts/gpu_bench_table.py "$out" > "$out/gpu-bench.md"
cat "$out/gpu-bench.md"
