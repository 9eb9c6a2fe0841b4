#!/usr/bin/env bash
# Session 12, ONE H200, ~3 min: where the FLCE's accumulate route stops paying, by its chunk size
# (tokens of fp32 logits in 512 MiB: 1024 at V=128256, 768 at 151936, 640 at 201088, 512 at 256000):
# both routes forced at Qwen2.5-1.5B's head (N=8192) and GPT-OSS-20B's, and Qwen2.5-1.5B's eager step.
set -uo pipefail
source "$(dirname "$0")/lib.sh" e
flce qwen15b 8192 1536 151936 "exact accumulate,exact tiles" 60
flce gptoss 8192 2880 201088 "exact accumulate,exact tiles" 60
Q=qwen2.5-1.5b-4x2048
for route in accumulate tiles; do
  LIGER_FLCE_EXACT_ROUTE=$route timeout 50 python3 benchmarks/bench_compile.py --out "$L/compile_$route" --warmup 2 --steps 4 \
    --timeout-s 45 --rows "$Q:ours-eager" >"$L/compile_$route.log" 2>&1
  echo "$route exit $?"; grep -E "^  [a-z]" "$L/compile_$route.log"
done
date -u +%H:%M:%S
tar czf "$OUT/e.tgz" -C "$OUT" e && rm -rf "$L"
