#!/usr/bin/env bash
# Runs CPU training with many lanes over and over and counts the runs that did not end
# well: the check for races between the training lanes (train::lanes), which show up
# only now and then. Before train::step gave each part its own parameter tracers, 5 of
# 155 runs crashed with 8 lanes on 2 cores (two loops at once); after, 0 of 165.
#
#   bash scripts/stress-lanes.sh [RUNS] [LANES] [BATCH]     (defaults 50, 8, 8)
#
# Uses target/debug/pipeline (cargo build first). Run two at once to load the machine.
set -uo pipefail
runs=${1:-50}; lanes=${2:-8}; batch=${3:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/debug/pipeline"
[ -x "$bin" ] || { echo "stress-lanes: build first (cargo build)" >&2; exit 2; }
failed=0
for i in $(seq 1 "$runs"); do
  out=$(mktemp -d)
  "$bin" train --model "$root/examples/quickstart-base" --data "$root/examples/quickstart-data" \
    --mode full --epochs 2 --batch-size "$batch" --cpu-threads "$lanes" --out "$out" --quiet \
    > "$out.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    echo "stress-lanes: run $i failed (exit $rc); log kept: $out.log" >&2
  else
    rm -f "$out.log"
  fi
  rm -rf "$out"
done
echo "stress-lanes: $failed of $runs runs failed ($lanes lanes, batch $batch)"
[ "$failed" -eq 0 ]
