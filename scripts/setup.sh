#!/usr/bin/env bash
# Prepares MLX for this checkout. Idempotent: a second run only re-checks.
#
# macOS: nothing to do; Cargo builds the upstream mlx-sys with Metal.
# Linux: MLX comes prebuilt from the PyPI `mlx-cpu` wheel (no source build, no network
# beyond package registries); mlx-sys is taken from crates.io, our patch
# (patches/mlx-sys-*-linux.diff) is applied to a copy under .mlx/, and a generated
# .cargo/config.toml points Cargo at that copy and at the wheel.
#
# --cuda (Linux): also fetch MLX's CUDA build of the same version (`mlx-cuda-13`) and the
# NVIDIA CUDA 13 libraries it links (the nvidia-* wheels its metadata names) into
# .mlx/mlx-cuda-13-<version>/. The same binary moves onto it by itself for
# `--device auto|gpu` on a machine with an NVIDIA driver; `pipeline doctor` reports.
# PIPELINE_CUDA_SKIP_NVIDIA=1 skips the NVIDIA wheels (about 2 GB) where PyTorch or a CUDA
# install already provides them.
set -euo pipefail

cuda=0
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=1 ;;
    *) echo "setup: unknown option $arg (use --cuda)" >&2; exit 2 ;;
  esac
done

# These three move together: mlx-rs 0.33.0 depends on mlx-sys 0.7.0, whose mlx-c pins
# MLX 0.32.2. Cargo.toml pins mlx-rs; the check below fails if they drift apart.
MLX_RS_VERSION=0.33.0
MLX_SYS_VERSION=0.7.0
MLX_VERSION=0.32.2

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
quiet=${SETUP_QUIET:-}
say() { [ -n "$quiet" ] || echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

if [ "$(uname -s)" = "Darwin" ]; then
  say "macOS: using the upstream mlx-rs/mlx-sys crates with Metal; nothing to prepare"
  exit 0
fi

grep -q "^mlx-rs = { version = \"=$MLX_RS_VERSION\"" Cargo.toml \
  || die "Cargo.toml does not pin mlx-rs =$MLX_RS_VERSION; update MLX_RS_VERSION, MLX_SYS_VERSION and MLX_VERSION in scripts/setup.sh together with it"

mlx_home="$root/.mlx"
wheel_dir="$mlx_home/mlx-cpu-$MLX_VERSION"
sys_dir="$mlx_home/mlx-sys-$MLX_SYS_VERSION"
patch_file="$root/patches/mlx-sys-$MLX_SYS_VERSION-linux.diff"
stamp="$mlx_home/ready"
want_stamp="$MLX_RS_VERSION $MLX_SYS_VERSION $MLX_VERSION $(sha256sum "$patch_file" | cut -c1-16)"

# 1. Debian packages: cmake + libclang (mlx-sys's build), OpenBLAS (fast BLAS at run time).
need=()
for pkg in cmake libclang-dev libopenblas0-pthread patch; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$cuda" = 1 ]; then
  cuda_dir="$mlx_home/mlx-cuda-13-$MLX_VERSION"
  mkdir -p "$mlx_home"
  if [ ! -f "$cuda_dir/mlx/lib/libmlx.so" ]; then
    say "downloading mlx-cuda-13==$MLX_VERSION from PyPI (about 90 MB)"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_35_x86_64 --python-version 3.11 \
      "mlx-cuda-13==$MLX_VERSION" -d "$tmp" \
      || die "could not download mlx-cuda-13==$MLX_VERSION from PyPI"
    rm -rf "$cuda_dir.tmp" && mkdir -p "$cuda_dir.tmp"
    python3 -m zipfile -e "$tmp"/mlx_cuda_13-*.whl "$cuda_dir.tmp"
    rm -rf "$tmp" "$cuda_dir" && mv "$cuda_dir.tmp" "$cuda_dir"
  fi
  if [ -z "${PIPELINE_CUDA_SKIP_NVIDIA:-}" ] && [ ! -f "$cuda_dir/nvidia/.ready" ]; then
    # The wheel's own requirements, so the two never drift; its libmlx.so looks for them
    # in ../../nvidia/*/lib, which is where --target puts them.
    mapfile -t reqs < <(sed -n 's/^Requires-Dist: //p' "$cuda_dir"/mlx_cuda_13-*.dist-info/METADATA)
    say "installing NVIDIA CUDA libraries: ${reqs[*]}"
    rm -rf "$cuda_dir/nvidia.tmp"
    python3 -m pip install --quiet --no-deps --only-binary=:all: --target "$cuda_dir/nvidia.tmp" "${reqs[@]}" \
      || die "could not install ${reqs[*]} from PyPI"
    rm -rf "$cuda_dir/nvidia" && mv "$cuda_dir/nvidia.tmp/nvidia" "$cuda_dir/nvidia"
    rm -rf "$cuda_dir/nvidia.tmp"
    touch "$cuda_dir/nvidia/.ready"
  fi
  say "MLX CUDA build ready in ${cuda_dir#$root/}"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -f .cargo/config.toml ] \
   && [ -f "$wheel_dir/mlx/lib/libmlx.so" ] && [ -f "$sys_dir/Cargo.toml" ]; then
  say "MLX $MLX_VERSION ready in .mlx/"
  exit 0
fi
mkdir -p "$mlx_home"

# 2. The MLX wheel of exactly the version mlx-c pins.
if [ ! -f "$wheel_dir/mlx/lib/libmlx.so" ]; then
  say "downloading mlx-cpu==$MLX_VERSION from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: "mlx-cpu==$MLX_VERSION" -d "$tmp" \
    || die "could not download mlx-cpu==$MLX_VERSION from PyPI"
  rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
  python3 -m zipfile -e "$tmp"/mlx_cpu-*.whl "$wheel_dir.tmp"
  rm -rf "$tmp" "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
fi

# 3. The wheel bundles the reference BLAS (10x slower); libmlx.so finds its BLAS through
#    an $ORIGIN rpath in mlx_cpu.libs, so point those two names at OpenBLAS.
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread
[ "$(uname -m)" = "x86_64" ] || openblas=/usr/lib/$(uname -m)-linux-gnu/openblas-pthread
for lib in "$wheel_dir"/mlx_cpu.libs/libblas-*.so.* "$wheel_dir"/mlx_cpu.libs/liblapack-*.so.*; do
  case "$(basename "$lib")" in
    libblas-*) target="$openblas/libblas.so.3" ;;
    *) target="$openblas/liblapack.so.3" ;;
  esac
  [ -f "$target" ] || die "$target is missing (package libopenblas0-pthread)"
  ln -sf "$target" "$lib"
done

# 4. mlx-sys from crates.io, through a throw-away manifest so this checkout's Cargo.lock
#    is untouched, then our patch on a fresh copy.
fetch_dir="$mlx_home/fetch"
mkdir -p "$fetch_dir/src"
cat > "$fetch_dir/Cargo.toml" <<TOML
[package]
name = "mlx-sys-fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
mlx-sys = { version = "=$MLX_SYS_VERSION", default-features = false }
[workspace]
TOML
: > "$fetch_dir/src/lib.rs"
say "fetching mlx-sys $MLX_SYS_VERSION from crates.io"
cargo fetch --quiet --manifest-path "$fetch_dir/Cargo.toml" || die "cargo could not fetch mlx-sys $MLX_SYS_VERSION"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/mlx-sys-$MLX_SYS_VERSION.crate 2>/dev/null | head -n 1)
[ -n "$crate" ] || die "mlx-sys-$MLX_SYS_VERSION.crate not found in Cargo's registry cache"
rm -rf "$sys_dir.tmp" && mkdir -p "$sys_dir.tmp"
tar -xzf "$crate" -C "$sys_dir.tmp" --strip-components=1
patch --quiet --batch -p1 -d "$sys_dir.tmp" < "$patch_file" \
  || die "patches/$(basename "$patch_file") does not apply to mlx-sys $MLX_SYS_VERSION"
rm -rf "$sys_dir" && mv "$sys_dir.tmp" "$sys_dir"

# 5. Cargo configuration for this checkout (git-ignored): the patched crate, the wheel,
#    and an rpath so the binaries find libmlx.so without LD_LIBRARY_PATH.
mkdir -p .cargo
cat > .cargo/config.toml.tmp <<TOML
# Generated by scripts/setup.sh; do not edit.
[patch.crates-io]
mlx-sys = { path = "$sys_dir" }

[env]
MLX_SYS_PREBUILT_MLX = "$wheel_dir/mlx"

[target.'cfg(target_os = "linux")']
rustflags = ["-C", "link-arg=-Wl,-rpath,$wheel_dir/mlx/lib"]
TOML
mv .cargo/config.toml.tmp .cargo/config.toml
echo "$want_stamp" > "$stamp"
say "MLX $MLX_VERSION ready (mlx-sys $MLX_SYS_VERSION patched in .mlx/, OpenBLAS)"
