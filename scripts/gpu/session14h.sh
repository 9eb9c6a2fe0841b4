#!/usr/bin/env bash
# Session 14, ONE H200, ~5 min: issue 15's Llama-3.2-1B 8x2048 rows (stock compiled, ours compiled, ours
# eager) after the session's changes (a tied head's gradients summed in place), one run.
set -uo pipefail
source "$(dirname "$0")/lib.sh" h
M=llama-1b-8x2048
timeout 330 python3 benchmarks/bench_compile.py --out "$L/compile" --warmup 2 --steps 4 --timeout-s 100 --budget-s 320 \
  --rows "$M:hf-compile,$M:ours-compile,$M:ours-eager" >"$L/compile.log" 2>&1
echo "compile exit $?"; grep -E "^  [a-z]" "$L/compile.log"; tail -8 "$L/compile.log"
date -u +%H:%M:%S
