#!/usr/bin/env bash
# Session 15, ONE H200, ~5 min: the convergence tests after the harness's moved samples also move the
# head input's gradient (qwen3_5_moe fp32 failed in session15a/b/c), two processes.
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
install_here
export OMP_NUM_THREADS=6
timeout 400 python3 -m pytest tests/test_convergence_moe.py $PT >"$L/moe.log" 2>&1 &
timeout 400 python3 -m pytest tests/test_convergence.py $PT >"$L/dense.log" 2>&1 &
wait
summarize moe dense
date -u +%H:%M:%S
