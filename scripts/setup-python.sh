#!/usr/bin/env bash
# Python tools the tests use (never the pipeline itself): coremltools reads our packages
# back, scikit-learn ships the digits images the training test uses. Idempotent.
set -euo pipefail
want="coremltools==9.0 scikit-learn==1.9.1"
if python3 - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
ok = m.version("coremltools") == "9.0" and m.version("scikit-learn") == "1.9.1"
sys.exit(0 if ok else 1)
PY
then
  exit 0
fi
echo "setup: installing $want from PyPI" >&2
python3 -m pip install --quiet --disable-pip-version-check $want
