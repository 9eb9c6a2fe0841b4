#!/usr/bin/env bash
# Session 15, ONE H200, ~3 min: after the moved samples also move each norm's input gradient: the
# qwen3_5_moe tests, the ratio probe, the dense convergence tests (three processes).
set -uo pipefail
source "$(dirname "$0")/lib.sh" f
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
export OMP_NUM_THREADS=5
PT="-p no:cacheprovider -o addopts= -q -rfEs --durations=5"
timeout 300 python3 -m pytest tests/test_convergence_moe.py -k "qwen3_5_moe or qwen3_next" $PT >"$L/moe.log" 2>&1 &
timeout 300 python3 -m pytest tests/test_convergence.py $PT >"$L/dense.log" 2>&1 &
timeout 300 python3 scripts/gpu/q35_ratios.py 2>&1 | grep -v "^\[transformers\]" >"$L/ratios.log" &
wait
for f in moe dense; do
  echo "-- $f: $(grep -E '(passed|failed|error)' "$L/$f.log" | tail -1)"
  grep -E "^(FAILED|ERROR)|^E +AssertionError" "$L/$f.log" | cut -c1-300 | head -8
done
cat "$L/ratios.log"
date -u +%H:%M:%S
