#!/usr/bin/env bash
# Session 15, ONE H200, ~3 min: after the moved samples also move each norm's input gradient: the
# qwen3_5_moe tests, the ratio probe, the dense convergence tests (three processes).
set -uo pipefail
source "$(dirname "$0")/lib.sh" f
install_here
export OMP_NUM_THREADS=5
timeout 300 python3 -m pytest tests/test_convergence_moe.py -k "qwen3_5_moe or qwen3_next" $PT >"$L/moe.log" 2>&1 &
timeout 300 python3 -m pytest tests/test_convergence.py $PT >"$L/dense.log" 2>&1 &
timeout 300 python3 scripts/gpu/q35_ratios.py 2>&1 | grep -v "^\[transformers\]" >"$L/ratios.log" &
wait
summarize moe dense
cat "$L/ratios.log"
date -u +%H:%M:%S
