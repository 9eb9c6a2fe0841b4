#!/usr/bin/env bash
# Session 15, ONE H200, ~2 min: the qwen3_5_moe / qwen3_next convergence tests and the harness's own tests
# after the stock-spread rule (as_far_as_a_stock_sample).
set -uo pipefail
source "$(dirname "$0")/lib.sh" g
install_here
export OMP_NUM_THREADS=8
timeout 200 python3 -m pytest tests/test_convergence_moe.py -k "qwen3_5_moe or qwen3_next" $PT >"$L/moe.log" 2>&1 &
timeout 200 python3 -m pytest tests/test_convergence.py -k "stock_sample or moved or extra_stock or small_defect or attention" $PT >"$L/harness.log" 2>&1 &
wait
summarize moe harness
date -u +%H:%M:%S
