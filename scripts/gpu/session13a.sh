#!/usr/bin/env bash
# Session 13, ONE H200, ~8 min: the FLCE accumulate route summing groups of bf16 dlogits (one
# accumulating matmul per group of 2048 tokens, computed in 512-token chunks of fp32 logits) against
# the route before (1024-token chunks, one accumulating matmul each), at Llama-3.2-1B's head (N=16384),
# Qwen2.5-1.5B's (N=8192) and issue 16's (N=8192, H=4096); then issue 15's Llama-3.2-1B compile rows,
# and ours compiled with LIGER_KERNEL_CHECK_LABELS=async (no host sync for the label check).
# Ran at commit b876005: its group providers left main with that code (benchmarks/results/h200/flce_groups13.md).
set -uo pipefail
source "$(dirname "$0")/lib.sh" a
G="exact accumulate G2048 C256,exact accumulate G2048 C1024,exact accumulate G4096 C512"
flce llama1b 16384 2048 128256 "exact (default),exact accumulate G1024 in place,$G,compile"
flce qwen25 8192 1536 151936 "exact (default),exact accumulate G768 in place,exact accumulate G4096 C512"
flce issue16 8192 4096 128256 "exact (default),exact accumulate G1024 in place,exact tiles"
date -u +%H:%M:%S
C=llama-1b-8x2048
timeout 300 python3 benchmarks/bench_compile.py --out "$L/compile" --warmup 2 --steps 4 --profile --timeout-s 90 \
  --budget-s 290 --rows "$C:hf-compile,$C:ours-compile,$C:ours-eager" >"$L/compile.log" 2>&1
echo "compile exit $?"; grep -E "^  [a-z]" "$L/compile.log"
LIGER_KERNEL_CHECK_LABELS=async timeout 120 python3 benchmarks/bench_compile.py --out "$L/compile_async" --warmup 2 \
  --steps 4 --profile --timeout-s 90 --budget-s 110 --rows "$C:ours-compile" >"$L/compile_async.log" 2>&1
echo "compile async exit $?"; grep -E "^  [a-z]" "$L/compile_async.log"
date -u +%H:%M:%S
tar czf "$OUT/a.tgz" -C "$OUT" a && rm -rf "$L"
