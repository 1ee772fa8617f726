#!/usr/bin/env bash
# Python tools the tests use (never the pipeline itself): coremltools reads our packages
# back, scikit-learn ships the digits images the training test uses, tree-sitter-swift
# parses the Swift harness, jsonschema checks the bench report samples. Idempotent.
set -euo pipefail
want="coremltools==9.0 scikit-learn==1.9.1 tree-sitter==0.26.1 tree-sitter-swift==0.7.4 jsonschema==4.26.0"
if python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
want = {"coremltools": "9.0", "scikit-learn": "1.9.1", "tree-sitter": "0.26.1", "tree-sitter-swift": "0.7.4", "jsonschema": "4.26.0"}
ok = all(m.version(k) == v for k, v in want.items())
sys.exit(0 if ok else 1)
PY
then
  exit 0
fi
echo "setup: installing $want from PyPI" >&2
python3 -m pip install --quiet --disable-pip-version-check $want
