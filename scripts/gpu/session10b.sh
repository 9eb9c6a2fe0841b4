#!/usr/bin/env bash
# Session 10, second call, TWO H200s (carry .peer), ~5 min:
#   1. GPU 0: norm10_ulps.py (our RMSNorm's fp32 rounding against stock's, both against float64);
#      GPU 1: sync10_probe.py (where a patched and a stock training step wait for the GPU);
#   2. issue 16's FSDP2 case, 3 interleaved rounds of ours / ours with the label check on the device /
#      Liger 0.8.5 (the first call read ours 179.5k vs Liger 180.2k tokens/s; session 9: 182.5k vs 123.0k).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/b"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
(CUDA_VISIBLE_DEVICES=0 timeout 120 python3 scripts/gpu/norm10_ulps.py >"$L/norm_ulps.log" 2>&1) &
(export CUDA_VISIBLE_DEVICES=1; timeout 100 python3 scripts/gpu/sync10_probe.py ours >"$L/sync_ours.log" 2>&1
 timeout 100 python3 scripts/gpu/sync10_probe.py hf >"$L/sync_hf.log" 2>&1) &
wait
cat "$L/norm_ulps.log"; grep -v "^\[transformers\]" "$L/sync_ours.log" | tail -60; tail -20 "$L/sync_hf.log"
echo "== bench $(date -u +%H:%M:%S)"
OUT="$L" BENCH_ARGS="--wrappers fsdp2 --providers ours,ours-async-labels,liger085 --rounds 3 --out $L/bench" \
  bash scripts/gpu/multigpu.sh bench >"$L/bench.log" 2>&1
echo "bench exit $?"; grep "|" "$L/bench/multigpu.md"
date -u +%H:%M:%S
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/b.tgz" -C "$OUT" b
