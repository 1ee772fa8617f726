#!/usr/bin/env bash
# Python MLX of the same pinned version, in a virtual environment under .mlx/, with its
# bundled reference BLAS pointed at OpenBLAS like ours: the reference for
# examples/bench_train.rs. Benchmarks only; tests never need it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.mlx/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mlx==0.32.2" "mlx-cpu==0.32.2"
fi
libs=$(ls -d "$venv"/lib/python3*/site-packages/mlx_cpu.libs | head -n 1)
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread
for lib in "$libs"/libblas-*.so.* "$libs"/liblapack-*.so.*; do
  case "$(basename "$lib")" in
    libblas-*) ln -sf "$openblas/libblas.so.3" "$lib" ;;
    *) ln -sf "$openblas/liblapack.so.3" "$lib" ;;
  esac
done
echo "$venv/bin/python"
