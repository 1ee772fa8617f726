#!/usr/bin/env bash
# Cost of the gradient all-reduce per step on MLX's ring backend over loopback: two
# ranks of `pipeline launch` on this host, ViT-Ti/16 and ViT-B/16 at 224x224, LoRA r8 and
# full fine-tuning, one image per rank per step. PIPELINE_ALLREDUCE_SYNC=1 makes the
# ranks meet before each exchange, so the time is the exchange, not a slower peer.
# Prints bytes, buckets and the median/mean milliseconds of each configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PIPELINE_BIN:-target/debug/pipeline}
STEPS=${STEPS:-6}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A small copy of the committed digits: 16 training and 2 validation images.
for split in train val; do
  n=$([ $split = train ] && echo 16 || echo 2)
  i=0
  for f in examples/quickstart-data/$split/*/*.png; do
    [ $i -ge $n ] && break
    c=$(basename "$(dirname "$f")")
    mkdir -p "$WORK/data/$split/$c"
    cp "$f" "$WORK/data/$split/$c/"
    i=$((i + 1))
  done
done
printf '| model | mode | bytes per step | buckets | median ms | mean ms |\n|---|---|---|---|---|---|\n'
for preset in vit-ti16 vit-b16; do
  "$BIN" convert "preset:$preset" --out "$WORK/$preset" >/dev/null
  for mode in lora full; do
    run="$WORK/run-$preset-$mode"
    PIPELINE_ALLREDUCE_SYNC=1 "$BIN" launch -n 2 --quiet -- train --model "$WORK/$preset" \
      --data "$WORK/data" --out "$run" --mode "$mode" --batch-size 2 --epochs 100 \
      --max-steps "$STEPS" --no-augment --workers 1 --quiet >/dev/null
    python3 - "$run/summary.json" "$preset" "$mode" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["allreduce"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {a['bytes_per_step']:,} | {a['buckets_per_step']} | {a['median_ms']:.1f} | {a['mean_ms']:.1f} |")
PY
  done
done
