#!/usr/bin/env bash
# Packs what scripts/bench-gpu.sh needs on a GPU machine that has no network into
# gpu-bundle/1 and gpu-bundle/2, each under the 64 MiB a device upload carries: MLX's
# CUDA wheel (87 MB) split in two with its checksum, the CPU wheel the binaries start on,
# the Python MLX wheels for CPython 3.10-3.13, and stripped release binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
MLX_VERSION=0.32.2
bundle="$root/gpu-bundle"
dl="$root/target/gpu-wheels"
mkdir -p "$dl"
get() { python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_35_x86_64 "$@" -d "$dl"; }
[ -n "$(ls "$dl"/mlx_cuda_13-*.whl 2>/dev/null)" ] || get --python-version 3.11 "mlx-cuda-13==$MLX_VERSION"
[ -n "$(ls "$dl"/mlx_cpu-*.whl 2>/dev/null)" ] || get --python-version 3.11 "mlx-cpu==$MLX_VERSION"
for v in 3.10 3.11 3.12 3.13; do
  tag=cp${v/./}
  [ -n "$(ls "$dl"/mlx-$MLX_VERSION-$tag-*.whl 2>/dev/null)" ] || get --python-version "$v" "mlx==$MLX_VERSION"
done
cargo build --release --bin pipeline --example bench_gpu
rm -rf "$bundle" && mkdir -p "$bundle/1" "$bundle/2/bin"
cuda=$(ls "$dl"/mlx_cuda_13-*.whl)
(cd "$dl" && sha256sum "$(basename "$cuda")") > "$bundle/1/mlx_cuda_13.sha256"
split -b 45000000 -d "$cuda" "$bundle/part-"
mv "$bundle/part-00" "$bundle/1/$(basename "$cuda").part-00"
mv "$bundle/part-01" "$bundle/2/$(basename "$cuda").part-01"
cp "$dl"/mlx_cpu-*.whl "$dl"/mlx-$MLX_VERSION-cp3*.whl "$bundle/1/"
strip -o "$bundle/2/bin/pipeline" target/release/pipeline
strip -o "$bundle/2/bin/bench_gpu" target/release/examples/bench_gpu
du -sh "$bundle"/1 "$bundle"/2
