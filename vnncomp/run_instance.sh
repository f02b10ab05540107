#!/usr/bin/env bash
# VNN-COMP contract: run_instance.sh VERSION CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Verifies one instance with MN-BaB and writes the competition's result file:
# unsat | sat + counterexample | unknown | timeout.
set -uo pipefail
if [ $# -ne 6 ]; then
    echo "usage: run_instance.sh VERSION CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 2
fi
version=$1 category=$2 onnx=$3 vnnlib=$4 results=$5 timeout=$6
root="$(cd "$(dirname "$0")/.." && pwd)"
python=${NNCERT_PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "nncert $version: category $category, timeout $timeout s" >&2
printf '%s,%s,%s\n' "$(realpath "$onnx")" "$(realpath "$vnnlib")" "$timeout" > "$work/instance.csv"
# the pipeline stops at the timeout; start-up and model loading come on top, so leave them a margin
budget=$(awk -v t="$timeout" 'BEGIN { m = t * 0.1; if (m > 10) m = 10; if (m < 1) m = 1; print (t - m > 0.5 ? t - m : 0.5) }')
cd "$root" && "$python" -m nncert.cli.certify --instances "$work/instance.csv" --domain "${NNCERT_DOMAIN:-mnbab}" \
    --timeout "$budget" --out "$work/results.csv" --vnncomp-dir "$work/answers" --quiet >&2
status=$?
answer=$(ls "$work"/answers/*/*.txt 2>/dev/null | head -1)
if [ $status -eq 0 ] && [ -n "$answer" ]; then
    cp "$answer" "$results"
else
    echo "unknown" > "$results"
    echo "run_instance.sh: certify failed (exit $status)" >&2
fi
