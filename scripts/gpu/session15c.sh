#!/usr/bin/env bash
# Session 15, ONE H200, ~3 min: scripts/gpu/q35_probe.py (qwen3_5_moe fp32 convergence, one op left stock at a time).
set -uo pipefail
source "$(dirname "$0")/lib.sh" c
install_here
export OMP_NUM_THREADS=4
for v in all no-rms_norm no-swiglu no-flce norm-only; do
  timeout 150 python3 scripts/gpu/q35_probe.py $v 2>&1 | grep -v "^\[transformers\]" >"$L/$v.log" &
done
wait
cat "$L"/*.log | tail -20
date -u +%H:%M:%S
