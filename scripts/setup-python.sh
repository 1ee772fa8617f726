#!/usr/bin/env bash
# Python tools the tests use (never the pipeline itself): coremltools reads our packages
# back, scikit-learn ships the digits images the training test uses, tree-sitter-swift
# parses the Swift harness, jsonschema checks the bench report samples, and PyTorch with
# transformers 5, peft and timm loads our PEFT adapters and trains the ones we import
# (torch's PyPI wheel brings NVIDIA's CUDA libraries, about 3 GB; it runs on the CPU).
# A second environment, .venv-tf4 (sharing torch through --system-site-packages), holds
# transformers 4.x with a peft of its time, for the classic-name adapter folders.
# Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pins="coremltools==9.0 scikit-learn==1.9.1 tree-sitter==0.26.1 tree-sitter-swift==0.7.4 jsonschema==4.26.0 torch==2.15.0 transformers==5.24.0 peft==0.21.2 timm==1.0.31 safetensors==0.8.0"
tf4_pins="transformers==4.57.6 peft==0.17.1"

# True when every name==version in $2 is installed for interpreter $1.
have() {
  "$1" - "$2" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = dict(p.split("==") for p in sys.argv[1].split())
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
PY
}

if ! have python3 "$pins"; then
  echo "setup: installing $pins from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check $pins
fi
venv="$root/.venv-tf4"
if [ ! -x "$venv/bin/python" ] || ! have "$venv/bin/python" "$tf4_pins"; then
  echo "setup: making .venv-tf4 with $tf4_pins" >&2
  # A half-made one fails `have` next time and is made again.
  rm -rf "$venv"
  python3 -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $tf4_pins
fi
