#!/usr/bin/env bash
# Session 9, second result call, TWO H200s (carry .peer), under 10 minutes: scripts/gpu/flce16.sh (the
# exact fused loss's routes alone at H=2048/4096 and under FSDP2/DDP vs Liger 0.8.5), then beside
# each other: GPU 0 the Llama-3.2-1B end-to-end cases (ours, Liger 0.8.5), GPU 1 the compile bench.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/b"
bash scripts/gpu/flce16.sh >"$OUT/b/flce16.log" 2>&1
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
(CUDA_VISIBLE_DEVICES=0 timeout 200 python3 benchmarks/e2e.py --cases llama-1b-8x2048,llama-1b-4x8192 \
  --providers ours,liger085 --warmup 2 --steps 5 --out "$OUT/b/e2e" >"$OUT/b/e2e.log" 2>&1) &
CUDA_VISIBLE_DEVICES=1 timeout 200 python3 benchmarks/bench_compile.py --out "$OUT/b/compile" --timeout-s 75 \
  --warmup 2 --steps 4 >"$OUT/b/compile.log" 2>&1
wait
cp -r benchmarks/results/h200/flce16 "$OUT/b/" 2>/dev/null
tar czf "$OUT/b.tgz" -C "$OUT" b flce16 2>/dev/null
tail -60 "$OUT/b/flce16.log"; tail -8 "$OUT/b/e2e.log"; grep -E "^  [a-z]|tokens" "$OUT/b/compile.log" | tail -12
