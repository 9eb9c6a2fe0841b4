#!/usr/bin/env bash
# Session 12, ONE H200, ~7 min: issue 15 after the FLCE softcap fusion. Gemma-2-2B's three compile
# rows profiled (GPU kernels and now host time per operator), Qwen2.5-1.5B's three rows (skipped in
# session 11), and the FLCE at Llama-3.2-1B's head (N=16384, H=2048): accumulate chunks of 1024 vs
# 2048 tokens, the tile route and torch.compile (ours spends 173.5 ms a step in matmuls vs stock's 165.9).
set -uo pipefail
source "$(dirname "$0")/lib.sh" a
timeout 100 python3 benchmarks/flce_exact.py --out "$L/flce" --tokens 16384 --errors "" --hidden 2048 \
  --providers "exact (default),exact accumulate R2048,exact tiles,compile" >"$L/flce.log" 2>&1
echo "flce exit $?"; grep -E '^\{' "$L/flce.log"
G=gemma2-2b-2x2048
Q=qwen2.5-1.5b-4x2048
timeout 290 python3 benchmarks/bench_compile.py --out "$L/compile" --warmup 2 --steps 4 --profile --timeout-s 80 --budget-s 285 \
  --rows "$G:hf-compile,$G:ours-compile,$G:ours-eager,$Q:hf-compile,$Q:ours-compile,$Q:ours-eager" >"$L/compile.log" 2>&1
echo "compile exit $?"; grep -E "^  [a-z]" "$L/compile.log"
date -u +%H:%M:%S
tar czf "$OUT/a.tgz" -C "$OUT" a && rm -rf "$L"
