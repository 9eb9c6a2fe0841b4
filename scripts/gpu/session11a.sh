#!/usr/bin/env bash
# Session 11, first call, TWO H200s (carry .peer), ~9.5 min: Liger 0.8.5's LigerExperts given the
# minutes its first-call autotuning needs, each GPU alone so that no other process skews its timings.
#   GPU 0: experts block at the Qwen3-30B-A3B shape (ours, transformers' grouped_mm, Liger; same run),
#          then the Qwen3-MoE end-to-end run (stock, ours, Liger; its autotuning reused from disk);
#   GPU 1: experts block at the GPT-OSS-20B shape (ours, grouped_mm, Liger with up to 500 s).
set -uo pipefail
source "$(dirname "$0")/lib.sh" a
export TRITON_CACHE_AUTOTUNING=1
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 300 python3 benchmarks/bench_moe.py --impls ours,hf_grouped_mm,liger085 --shapes qwen3_30b_a3b \
    --timeout 100 --peer-timeout 280 --keep-heads --out "$L/moe_qwen" >"$L/bench_qwen.log" 2>&1
  echo "qwen bench exit $? $(date -u +%H:%M:%S)"
  timeout 250 python3 benchmarks/e2e.py --cases qwen3-moe-30b-a3b-4x2048 --warmup 2 --steps 4 --timeout-s 150 \
    --out "$L/e2e_qwen" >"$L/e2e_qwen.log" 2>&1
  echo "qwen e2e exit $? $(date -u +%H:%M:%S)"
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 560 python3 benchmarks/bench_moe.py --impls ours,hf_grouped_mm,liger085 --shapes gpt_oss_20b \
    --timeout 100 --peer-timeout 520 --keep-heads --out "$L/moe_gpt_oss" >"$L/bench_gpt_oss.log" 2>&1
  echo "gpt_oss bench exit $? $(date -u +%H:%M:%S)"
) &
wait
for f in "$L"/moe_*/moe.md "$L"/e2e_qwen/e2e.md; do echo "-- $f"; cat "$f" 2>/dev/null | cut -c1-600; done
tail -5 "$L"/bench_*.log "$L"/e2e_qwen.log
date -u +%H:%M:%S
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/a.tgz" -C "$OUT" a
