#!/usr/bin/env bash
# Session 12, ONE H200 (carry .peer), ~12 min in two calls (`... session12d.sh 1`, then `2`): the final ones. GPU tests of what changed (RoPE kernel and
# host path, the FLCE's chunk floor and route rule); rope12.sh (M-RoPE variants vs Liger 0.8.5 and
# compile, e2e with Liger's RoPE on/off); the compile table, all three cases in one run; Gemma-3 e2e
# (stock, ours, Liger 0.8.5) after the FLCE change.
set -uo pipefail
source "$(dirname "$0")/lib.sh" d
if [ "${1:-1}" = 1 ]; then
timeout 170 python3 -m pytest tests/test_rope.py tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py \
  tests/test_fused_linear_cross_entropy.py -p no:cacheprovider -o addopts="" -q -x -rfE >"$L/tests.log" 2>&1
echo "tests exit $?"; tail -4 "$L/tests.log"
bash scripts/gpu/rope12.sh
tar czf "$OUT/d1.tgz" -C "$OUT" d && rm -rf "$L"
exit 0
fi
G=gemma2-2b-2x2048; Q=qwen2.5-1.5b-4x2048; M=llama-1b-8x2048
timeout 300 python3 benchmarks/bench_compile.py --out "$L/compile" --warmup 2 --steps 4 --timeout-s 80 --budget-s 295 \
  --rows "$M:hf-compile,$M:ours-compile,$M:ours-eager,$G:hf-compile,$G:ours-compile,$G:ours-eager,$Q:hf-compile,$Q:ours-compile,$Q:ours-eager" \
  >"$L/compile.log" 2>&1
echo "compile exit $?"; grep -E "^  [a-z]" "$L/compile.log"
timeout 200 python3 benchmarks/e2e.py --cases gemma3-4b-2x2048 --providers hf,ours,liger085 --timeout-s 65 \
  --out "$L/e2e_gemma3" >"$L/e2e_gemma3.log" 2>&1
echo "e2e exit $?"; cat "$L/e2e_gemma3/e2e.md" 2>/dev/null | tail -4
date -u +%H:%M:%S
tar czf "$OUT/d2.tgz" -C "$OUT" d && rm -rf "$L"
