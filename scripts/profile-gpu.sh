#!/usr/bin/env bash
# Where a ViT-B/16 training step's time goes on the GPU machine, ours against PyTorch:
# Nsight Compute's per-kernel durations summed by kind (scripts/ncu_summary.py), and our
# step split into host graph building, forward, forward+backward and the whole step,
# with the forward and backward pass compiled and not.
#
#   bash scripts/profile-gpu.sh torch OUT   # PyTorch only: needs no bundle (first call)
#   bash scripts/profile-gpu.sh ours OUT    # ours: needs gpu-bundle/1 and 2 (second call)
#
# PROFILE_CONFIGS (ours, preset:batch:mode:precision) and PROFILE_TORCH (PyTorch,
# name:hidden:depth:heads:batch:mode:precision) choose the profiled configurations;
# PROFILE_NCU the ones of ours under Nsight Compute, PROFILE_VARIANTS which compile
# settings (0 1) they run with, PROFILE_PHASES=0 leaves out the phase timings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:?torch or ours}
out=${2:-${OUT:-$root/target/profile-gpu-out}}
mkdir -p "$out"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[ -n "$ncu" ] || { echo "profile-gpu: no ncu on this machine" >&2; exit 1; }
# Durations only (one pass, no replay of memory); clocks left as the card has them.
prof() {
  local csv=$1
  shift
  "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    --log-file "$csv" "$@" >/dev/null
}
steps=3

case $what in
torch)
  for c in ${PROFILE_TORCH:-vit-b16:768:12:12:64:full:bfloat16 vit-b16:768:12:12:64:lora:bfloat16}; do
    tag=$(echo "$c" | cut -d: -f1,5,6 | tr : -)
    # bench_train_torch.py runs one untimed step before its warm-up: steps + 1 in all.
    prof "$out/ncu-torch-$tag.csv" python3 scripts/bench_train_torch.py --steps $steps --warmup 0 --configs "$c"
    python3 scripts/ncu_summary.py "$out/ncu-torch-$tag.csv" --steps $((steps + 1)) \
      --label "PyTorch eager $tag" --json "$out/ncu-torch-$tag.json" | tee -a "$out/profile.md"
  done
  # One torch.compile configuration, to see that inductor works here and what it costs.
  python3 scripts/bench_train_torch.py --compile --steps 8 --warmup 10 \
    --configs vit-b16:768:12:12:64:full:bfloat16 | tee "$out/torch-compile-trial.jsonl"
  ;;
ours)
  . "$root/scripts/gpu-env.sh"
  configs=${PROFILE_CONFIGS:-vit-b16:64:full:bfloat16,vit-b16:64:lora:bfloat16,vit-b16:256:full:bfloat16,vit-b16:256:lora:bfloat16,vit-ti16:64:full:bfloat16,vit-ti16:256:lora:bfloat16}
  if [ "${PROFILE_PHASES:-1}" = 1 ]; then
    start "$bin/bench_gpu" --device gpu --steps 8 --warmup 10 --compile 0,1 --phases \
      --configs "$configs" | tee "$out/ours-phases.jsonl"
  fi
  for c in ${PROFILE_NCU:-vit-b16:64:full:bfloat16}; do
    for v in ${PROFILE_VARIANTS:-0 1}; do
      tag=$(echo "$c" | cut -d: -f1,2,3 | tr : -)-c$v
      prof "$out/ncu-ours-$tag.csv" env LD_LIBRARY_PATH="$cpu_home/mlx/lib" \
        "$bin/bench_gpu" --device gpu --steps $steps --warmup 0 --compile $v --configs "$c"
      python3 scripts/ncu_summary.py "$out/ncu-ours-$tag.csv" --steps $steps \
        --label "ours $tag" --json "$out/ncu-ours-$tag.json" | tee -a "$out/profile.md"
    done
  done
  ;;
*)
  echo "profile-gpu: torch or ours, not $what" >&2
  exit 2
  ;;
esac
