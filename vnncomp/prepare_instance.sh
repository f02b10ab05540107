#!/usr/bin/env bash
# VNN-COMP contract: prepare_instance.sh VERSION CATEGORY ONNX VNNLIB
# Nothing to convert: stop stray runs of an earlier instance, then check that the model imports.
set -uo pipefail
if [ $# -ne 4 ]; then
    echo "usage: prepare_instance.sh VERSION CATEGORY ONNX VNNLIB" >&2
    exit 2
fi
onnx=$3
root="$(cd "$(dirname "$0")/.." && pwd)"
python=${NNCERT_PYTHON:-$root/.venv/bin/python}
pkill -f "nncert.cli.certify --instances" 2>/dev/null || true
cd "$root" && "$python" -c "import sys; from nncert.verifier.onnx_import import load_onnx; load_onnx(sys.argv[1])" "$onnx"
