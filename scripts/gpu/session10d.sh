#!/usr/bin/env bash
# Session 10, fourth call, TWO H200s (carry .peer), ~6 min:
#   0. both GPUs: issue 16's ZeRO-3 case, 3 interleaved rounds of ours / Liger 0.8.5 (one run each read
#      101.2k vs 82.6k, then 80.4k vs 80.9k tokens/s: DeepSpeed's step moves by 20% between runs);
#   1. GPU 1: MoE convergence fp32 / bf16 (the harness's third sample, now differentiable), the
#      distillation op tests (the KL test's fp32 yardstick); GPU 0: the norm probe with the moved-inputs run.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/d"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
OUT="$L" BENCH_ARGS="--wrappers zero3 --providers ours,liger085 --rounds 3 --out $L/zero3" \
  bash scripts/gpu/multigpu.sh bench >"$L/zero3.log" 2>&1
echo "zero3 exit $?"; grep "|" "$L/zero3/multigpu.md"
date -u +%H:%M:%S
(CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/gpu/moe10_norm_probe.py qwen3_5_moe:fp32 gpt_oss:fp32 deepseek_v4:fp32 \
  >"$L/norm_probe.log" 2>&1) &
export CUDA_VISIBLE_DEVICES=1
run() { timeout 200 python3 -m pytest "${@:2}" -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$1.log" 2>&1; }
run moe_fp32 tests/test_convergence_moe.py -k "not dtype1" &
run moe_bf16 tests/test_convergence_moe.py -k dtype1 &
run distill_ops tests/test_fused_linear_distill_ops.py &
wait
date -u +%H:%M:%S
for f in "$L"/t_*.log; do echo "-- $(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; grep -E "^(FAILED|ERROR)|^E  " "$f" | head -16 | cut -c1-250; done
grep -v "^\[transformers\]" "$L/norm_probe.log" | grep -E "==|norms  |moved" | cut -c1-300
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/d.tgz" -C "$OUT" d
