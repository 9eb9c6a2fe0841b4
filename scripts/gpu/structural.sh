#!/usr/bin/env bash
# GPU run for the structural helper (session 7): the convergence tests (two stock runs as the
# yardstick) and the patch-by-structure tests, at the GPU sizes of tests/test_convergence.py.
# Logs under $OUT/structural/. Expected: ~3 minutes (each pytest bounded: 200 s and 80 s).
# Usage, from the repo root: bash scripts/gpu/structural.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
LOGS="$OUT/structural"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$LOGS/versions.txt"
for name in convergence:200 structural_patch:80; do
  file=${name%%:*}
  limit=${name##*:}
  echo "== test_$file $(date -u +%H:%M:%S)"
  timeout "$limit" python3 -m pytest "tests/test_$file.py" -p no:cacheprovider -o addopts="" -q -rfE --durations=10 \
    >"$LOGS/test_$file.log" 2>&1
  echo "exit $?"
  tail -15 "$LOGS/test_$file.log"
done
