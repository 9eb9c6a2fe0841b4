#!/usr/bin/env bash
# Session 10, first call, TWO H200s (nvidia-h200-x2; carry .peer), under 10 minutes:
#   1. beside each other: the two-process NCCL cases and the HF Trainer under FSDP1 / ZeRO-2 / ZeRO-3
#      (multigpu.sh tests, trainer); GPU 0: moe10_norm_probe.py (which patched norm, and which of its
#      properties, moves the MoE families' first-step gradients); the distillation and post-training
#      test groups split over both GPUs, at most four processes per GPU;
#   2. alone: issue 16's benchmark, every wrapper (FSDP2, DDP, ZeRO-3) x stock / ours / Liger 0.8.5.
# Everything under $OUT/a.tgz plus $OUT/summary.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/a"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
date -u +%H:%M:%S
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"
(OUT="$L" bash scripts/gpu/multigpu.sh tests >"$L/mg_tests.log" 2>&1; echo "multigpu tests exit $?" >>"$L/mg_tests.log"
 OUT="$L" bash scripts/gpu/multigpu.sh trainer >"$L/mg_trainer.log" 2>&1; echo "multigpu trainer exit $?" >>"$L/mg_trainer.log") &
run() {  # gpu name pytest-args...
  CUDA_VISIBLE_DEVICES=$1 timeout 270 python3 -m pytest "${@:3}" -p no:cacheprovider -o addopts="" -q -rfE --durations=5 >"$L/t_$2.log" 2>&1
}
(CUDA_VISIBLE_DEVICES=0 timeout 270 python3 scripts/gpu/moe10_norm_probe.py qwen3_5_moe:fp32 gpt_oss:fp32 deepseek_v4:fp32 \
  >"$L/norm_probe.log" 2>&1) &
run 0 distill_chunked tests/test_chunked_distillation.py &
run 0 distill_ops tests/test_fused_linear_distill_ops.py tests/test_tvd.py &
run 1 divergence tests/test_jsd.py tests/test_grpo_loss_op.py tests/test_kl_div.py &
run 1 preference tests/test_chunked_preference.py tests/test_preference_syncs.py &
run 1 grpo tests/test_chunked_grpo.py tests/test_fused_linear_logprobs.py &
wait
date -u +%H:%M:%S
tail -3 "$L/mg_tests.log" "$L/mg_trainer.log"
for f in "$L"/t_*.log; do echo "-- $(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; grep -E "^(FAILED|ERROR)" "$f" | head -12; done
grep -v "^\[transformers\]" "$L/norm_probe.log" | tail -40 | cut -c1-400
echo "== bench $(date -u +%H:%M:%S)"
OUT="$L" BENCH_ARGS="--out $L/bench" bash scripts/gpu/multigpu.sh bench >"$L/bench.log" 2>&1
echo "bench exit $?"; grep "|" "$L/bench/multigpu.md"
date -u +%H:%M:%S
} 2>&1 | tee "$OUT/summary.log"
cp "$OUT/summary.log" "$L/"
tar czf "$OUT/a.tgz" -C "$OUT" a
