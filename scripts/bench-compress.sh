#!/usr/bin/env bash
# Compressed export of ViT-B/16 against coremltools' ct.optimize.coreml on the same fp16
# package, one method at a time, alternating the two tools, in one run: wall time and
# peak RSS of each (GNU time for ours, getrusage in a fresh process for coremltools).
# Needs a release build and coremltools (scripts/setup-python.sh).
#
#   bash scripts/bench-compress.sh [METHODS...]     (default: int8 palette6 palette4 int4)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/pipeline"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(int8 palette6 palette4 int4)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin" convert preset:vit-b16 --out "$work/vit-b16" >/dev/null
"$bin" export "$work/vit-b16" --out "$work/fp16.mlpackage" --input array --target ios18 >/dev/null
fp16_bytes=$(stat -c %s "$work/fp16.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
printf '%-9s %12s %12s %14s %14s %9s %10s\n' method "ours s" "ours MB" "coremltools s" "coremltools MB" speed-up "bytes/fp16"
for m in "${methods[@]}"; do
  target=ios16
  [ "$m" = int4 ] && target=ios18
  stats=$( { /usr/bin/time -f '%e %M' "$bin" export "$work/vit-b16" --out "$work/ours-$m.mlpackage" \
      --input array --target "$target" --compress "$m" --force >/dev/null; } 2>&1 | tail -1)
  ours_s=${stats% *}; ours_kb=${stats#* }
  ct_json=$(python3 "$root/scripts/bench_compress_coremltools.py" "$work/fp16.mlpackage" "$m" "$work/ct-$m.mlpackage" 2>/dev/null | tail -1)
  ct_s=$(python3 -c "import json,sys; print('%.2f' % json.loads(sys.argv[1])['seconds'])" "$ct_json")
  ct_mb=$(python3 -c "import json,sys; print('%.0f' % json.loads(sys.argv[1])['peak_rss_mb'])" "$ct_json")
  bytes=$(stat -c %s "$work/ours-$m.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
  awk -v m="$m" -v s="$ours_s" -v kb="$ours_kb" -v cs="$ct_s" -v cm="$ct_mb" -v b="$bytes" -v f="$fp16_bytes" \
    'BEGIN { printf "%-9s %12s %12.0f %14s %14s %8.1fx %10.3f\n", m, s, kb / 1024, cs, cm, cs / s, b / f }'
done
