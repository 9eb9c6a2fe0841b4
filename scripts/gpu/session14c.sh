#!/usr/bin/env bash
# Session 14, ONE H200 (carry .peer), ~8 min: after plain_on (a tied head's gradient summed in place):
# the fused heads' GPU tests, the Gemma 3 tiled step's peak again, then Gemma 3 e2e in one run (stock,
# ours, Liger 0.8.5, ours with tiled_mlp=True) and Llama-3.2-1B (tied) ours vs Liger.
set -uo pipefail
source "$(dirname "$0")/lib.sh" c
bash benchmarks/setup_peers.sh >/dev/null
timeout 240 python3 -m pytest tests/test_fused_linear_cross_entropy.py tests/test_fused_linear_logprobs.py \
  -p no:cacheprovider -o addopts="" -q -x -rfE >"$L/tests.log" 2>&1
echo "tests exit $?"; tail -3 "$L/tests.log"
timeout 100 python3 scripts/gpu/mem12.py gemma3-4b-2x2048-tiled ours >"$L/mem_gemma3_tiled.log" 2>&1
echo "mem exit $?"; grep -v "^Backend\|deprecated" "$L/mem_gemma3_tiled.log" | head -14
gemma3_e2e
timeout 150 python3 benchmarks/e2e.py --cases llama-1b-8x2048 --providers ours,liger085 --timeout-s 70 \
  --out "$L/e2e_llama" >"$L/e2e_llama.log" 2>&1
echo "e2e llama exit $?"; tail -6 "$L/e2e_llama.log"
date -u +%H:%M:%S
