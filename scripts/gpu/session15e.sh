#!/usr/bin/env bash
# Session 15, ONE H200, ~2 min: scripts/gpu/q35_ratios.py (qwen3_5_moe fp32: each run's error over the stock samples').
set -uo pipefail
source "$(dirname "$0")/lib.sh" e
install_here
export OMP_NUM_THREADS=8
timeout 300 python3 scripts/gpu/q35_ratios.py 2>&1 | grep -v "^\[transformers\]" >"$L/ratios.log"
cat "$L/ratios.log" | tail -12
date -u +%H:%M:%S
