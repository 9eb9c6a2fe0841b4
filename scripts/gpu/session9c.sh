#!/usr/bin/env bash
# Session 9, third result call, TWO H200s (carry .peer; DeepSpeed wheels in .peer/wheels/deepspeed), ~7 min:
#   1. the two-process NCCL cases (DDP, FSDP2, FSDP1, TP) with the exact fused loss's new default route;
#   2. the ZeRO-3 benchmark, ours vs Liger 0.8.5 (the FSDP2/DDP rows came from session9b/flce16.sh);
#   3. the test groups that ran out of GPU memory in session9a (too many at once on one GPU), now at most
#      four per GPU: VL and MoE convergence, compile families, post-training, distillation; beside them
#      scripts/gpu/moe9_first_grads.py (each MoE patch flag alone on the first step's gradients).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/c"
mkdir -p "$L"
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1
OUT="$L" bash scripts/gpu/multigpu.sh tests >"$L/multigpu_tests.log" 2>&1
echo "multigpu tests exit $?"; grep -E "PASS|FAIL|ok|Error" "$L/multigpu_tests.log" | tail -12
OUT="$L" BENCH_ARGS="--wrappers zero3 --providers ours,liger085 --warmup 2 --steps 6 --out $L/zero3" \
  bash scripts/gpu/multigpu.sh bench >"$L/zero3.log" 2>&1
echo "zero3 exit $?"; cat "$L/zero3/multigpu.md" 2>/dev/null | grep "|"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
run() {  # gpu name args...
  CUDA_VISIBLE_DEVICES=$1 timeout 230 python3 -m pytest "${@:3}" -p no:cacheprovider -o addopts="" -q -rfE >"$L/t_$2.log" 2>&1
}
run 0 vlm_fp32 tests/test_convergence_vlm.py -k "not dtype1" &
run 0 vlm_bf16 tests/test_convergence_vlm.py -k dtype1 &
run 0 compile_families tests/test_compile.py -k family &
run 0 syncs tests/test_preference_syncs.py tests/test_fused_linear_logprobs.py &
run 1 moe_fp32 tests/test_convergence_moe.py -k "not dtype1" &
run 1 moe_bf16 tests/test_convergence_moe.py -k dtype1 &
run 1 pref tests/test_chunked_preference.py &
(CUDA_VISIBLE_DEVICES=1 timeout 220 python3 scripts/gpu/moe9_first_grads.py qwen3_5_moe:fp32 gpt_oss:fp32 deepseek_v4:fp32 \
  qwen3_next:bf16 >"$L/first_grads.log" 2>&1) &
run 1 distill tests/test_chunked_distillation.py tests/test_fused_linear_distill_ops.py tests/test_jsd.py tests/test_grpo_loss_op.py tests/test_tvd.py tests/test_kl_div.py &
wait
for f in "$L"/t_*.log; do echo "-- $(basename "$f"): $(grep -E '(passed|failed|error)' "$f" | tail -1)"; grep -E "^(FAILED|ERROR)" "$f" | head -10; done
grep -v "^\[transformers\]" "$L/first_grads.log" | tail -45
tar czf "$OUT/c.tgz" -C "$OUT" c
