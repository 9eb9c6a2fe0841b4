#!/usr/bin/env bash
# Session 13, ONE H200, ~8 min: the FLCE accumulate route within its old memory (a group's bf16 dlogits
# and one fp32 chunk in the same 512 MiB: 1536 tokens a sum in 256-token chunks at V=128256, against
# 1024 in place before), the gradient coefficients computed once rather than per chunk (no z-loss /
# token scaling), other group sizes for the record; then issue 15's compile rows (Llama-3.2-1B and
# Qwen2.5-1.5B: both heads take the accumulate route).
# Ran at commit 4064e13: its group providers left main with that code (benchmarks/results/h200/flce_groups13.md).
set -uo pipefail
source "$(dirname "$0")/lib.sh" b
A="exact accumulate"
flce llama1b 16384 2048 128256 "exact (default),$A G1024 in place,$A G1280 C384,$A G2048 C512,$A G4096 C512"
flce qwen25 8192 1536 151936 "exact (default),$A G768 in place,$A G4096 C512"
flce issue16 8192 2048 128256 "exact (default),$A G1024 in place,exact tiles"
flce issue11 8192 4096 128256 "exact (default),$A G1024 in place"
date -u +%H:%M:%S
C=llama-1b-8x2048
Q=qwen2.5-1.5b-4x2048
timeout 330 python3 benchmarks/bench_compile.py --out "$L/compile" --warmup 2 --steps 4 --timeout-s 90 --budget-s 320 \
  --rows "$C:hf-compile,$C:ours-compile,$C:ours-eager,$Q:hf-compile,$Q:ours-compile,$Q:ours-eager" >"$L/compile.log" 2>&1
echo "compile exit $?"; grep -E "^  [a-z]" "$L/compile.log"
date -u +%H:%M:%S
tar czf "$OUT/b.tgz" -C "$OUT" b && rm -rf "$L"
