# Sourced by scripts/bench-gpu.sh and scripts/profile-gpu.sh on the GPU machine: lays out
# MLX's CUDA build, the CPU build our binaries start on and Python MLX from gpu-bundle/,
# and defines `start` (runs one of our binaries) and the variables the scripts share.
# Needs `root` set to the checkout.
bundle="$root/gpu-bundle"
work="$root/target/gpu-work"
log() { echo "$(basename "$0"): $*" >&2; }

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

