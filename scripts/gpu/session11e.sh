#!/usr/bin/env bash
# Session 11, ONE H200, ~3.5 min: where Gemma-2-2B's step goes (ours compiled 0.88x stock compiled in
# call d): its three compile rows profiled, then ours again with the FLCE tile route forced.
set -uo pipefail
source "$(dirname "$0")/lib.sh" e
G=gemma2-2b-2x2048
timeout 130 python3 benchmarks/bench_compile.py --out "$L/default" --warmup 2 --steps 4 --profile --timeout-s 70 --budget-s 125 \
  --rows "$G:hf-compile,$G:ours-compile,$G:ours-eager" >"$L/default.log" 2>&1
echo "exit $?"; grep -E "^  [a-z]" "$L/default.log"
LIGER_FLCE_EXACT_ROUTE=tiles timeout 60 python3 benchmarks/bench_compile.py --out "$L/tiles" --warmup 2 --steps 4 \
  --timeout-s 55 --budget-s 58 --rows "$G:ours-eager" >"$L/tiles.log" 2>&1
echo "exit $?"; grep -E "^  [a-z]" "$L/tiles.log"
date -u +%H:%M:%S
tar czf "$OUT/e.tgz" -C "$OUT" e && rm -rf "$L"
