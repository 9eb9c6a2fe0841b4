#!/usr/bin/env bash
# Session 9, first GPU call, on TWO H200s (nvidia-h200-x2; carry .peer), ~8 minutes: diagnosis only.
#   GPU 0: kernel profiles of DPO (issue 12's shape) and of the fused linear cross-entropy at issue 16's
#          head (N=8192, H=2048), ours and Liger 0.8.5; flce_exact.py at H=2048 (every exact/fast
#          variant, then Liger); one profiled training step of llama-1b-8x2048, ours and Liger.
#   GPU 1: Liger 0.8.5's LigerExperts at both experts-block shapes with its autotune given 240 s;
#          then where Gemma 3's end-to-end peak memory goes, ours and Liger (scripts/gpu/diag9_mem.py).
# Everything in $OUT/diag9.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/diag9"
mkdir -p "$L"
export PYTHONUNBUFFERED=1
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1
OURS=src
PEER=.peer/liger085
gpu0() {
  export CUDA_VISIBLE_DEVICES=0
  for w in dpo flce; do
    PYTHONPATH=$OURS timeout 90 python scripts/gpu/diag9_prof.py $w >"$L/prof_${w}_ours.log" 2>&1
    PYTHONPATH=$PEER timeout 120 python scripts/gpu/diag9_prof.py $w >"$L/prof_${w}_liger.log" 2>&1
  done
  PYTHONPATH=$OURS timeout 120 python benchmarks/flce_exact.py --hidden 2048 --tokens 8192 --errors "" \
    --providers "exact (default),exact nothing kept,fast (accum bf16),fast accum fp32" --out "$L/flce" >"$L/flce_ours.log" 2>&1
  PYTHONPATH=$PEER timeout 90 python benchmarks/flce_exact.py --hidden 2048 --tokens 8192 --errors "" \
    --providers liger085 --out "$L/flce_peer" >"$L/flce_liger.log" 2>&1
  for p in ours liger085; do
    pp=$OURS; [ $p = liger085 ] && pp=$PEER
    PYTHONPATH=$pp timeout 120 python benchmarks/e2e.py --worker llama-1b-8x2048 $p --warmup 2 --steps 3 --profile \
      >"$L/e2e_prof_$p.log" 2>&1
  done
}
gpu1() {
  export CUDA_VISIBLE_DEVICES=1
  PYTHONPATH=$OURS timeout 300 python benchmarks/bench_moe.py --impls liger085 --peer-timeout 270 --keep-heads \
    --out "$L/moe_peer" >"$L/moe_peer.log" 2>&1
  for p in ours liger085; do
    pp=$OURS; [ $p = liger085 ] && pp=$PEER
    PYTHONPATH=$pp:benchmarks timeout 150 python scripts/gpu/diag9_mem.py gemma3-4b-2x2048 $p >"$L/mem_gemma3_$p.log" 2>&1
  done
}
gpu0 &
gpu1 &
wait
tar czf "$OUT/diag9.tgz" -C "$OUT" diag9
tail -n 5 "$L"/*.log
