#!/usr/bin/env bash
# Session 15, ONE H200, ~5 min: the convergence tests after the harness's moved samples also move the
# head input's gradient (qwen3_5_moe fp32 failed in session15a/b/c), two processes.
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
export OMP_NUM_THREADS=6
PT="-p no:cacheprovider -o addopts= -q -rfEs --durations=5"
timeout 400 python3 -m pytest tests/test_convergence_moe.py $PT >"$L/moe.log" 2>&1 &
timeout 400 python3 -m pytest tests/test_convergence.py $PT >"$L/dense.log" 2>&1 &
wait
for f in moe dense; do
  echo "-- $f: $(grep -E '(passed|failed|error)' "$L/$f.log" | tail -1)"
  grep -E "^(FAILED|ERROR)|^E +AssertionError" "$L/$f.log" | cut -c1-300 | head -8
done
date -u +%H:%M:%S
