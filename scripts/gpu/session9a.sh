#!/usr/bin/env bash
# Session 9, first of two result calls, on TWO H200s (nvidia-h200-x2; carry .peer), under 10 minutes:
#   GPU 0: the experts-block benchmark in one run: ours, transformers' grouped_mm and eager experts,
#          Liger 0.8.5's LigerExperts last with its autotune given LIGER_S seconds for both shapes
#          (its Qwen3 shape alone took 181 s this session);
#   GPU 1: every GPU test group at once (convergence text/MoE/VLM fp32 and bf16, fused MoE, compile,
#          the new compiled losses, post-training with the host-sync test, the fused linear
#          cross-entropy's routes, issue 13's kernels) beside the post-training benchmark's warm-up;
#          then the post-training benchmark (DPO/GRPO/JSD, every loss type, the one-pass and
#          whole-batch routes, the plain path, Liger); then issue 13's kernel benchmarks (as kernels13.sh).
# Everything under $OUT/all.tgz plus $OUT/summary.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/logs"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TORCHINDUCTOR_COMPILE_THREADS=4
LIGER_S=${LIGER_S:-370}
{
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.device_count(), torch.cuda.get_device_name())"
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"

(
  export CUDA_VISIBLE_DEVICES=0
  timeout $((LIGER_S + 170)) python3 benchmarks/bench_moe.py --impls hf_grouped_mm,hf_eager,ours,liger085 \
    --timeout 100 --peer-timeout "$LIGER_S" --keep-heads --out benchmarks/results/h200/moe >"$L/moe_bench.log" 2>&1
  echo "moe bench exit $?" >>"$L/moe_bench.log"
) &

export CUDA_VISIBLE_DEVICES=1
echo "== tests $(date -u +%H:%M:%S)"
groups=(
  "conv_fp32|tests/test_convergence.py -k not_dtype1"
  "conv_bf16|tests/test_convergence.py -k dtype1"
  "moe_fp32|tests/test_convergence_moe.py -k not_dtype1"
  "moe_bf16|tests/test_convergence_moe.py -k dtype1"
  "vlm_fp32|tests/test_convergence_vlm.py -k not_dtype1"
  "vlm_bf16|tests/test_convergence_vlm.py -k dtype1"
  "fused_moe|tests/test_fused_moe.py"
  "compile_models|tests/test_compile.py -k patched_and_not_family"
  "compile_families|tests/test_compile.py -k family"
  "compile_new|tests/test_compile_ops13.py tests/test_compile_post.py tests/test_compile_losses.py"
  "post|tests/test_chunked_preference.py tests/test_preference_syncs.py tests/test_chunked_grpo.py tests/test_fused_linear_logprobs.py"
  "distill|tests/test_chunked_distillation.py tests/test_fused_linear_distill_ops.py tests/test_jsd.py tests/test_grpo_loss_op.py tests/test_tvd.py tests/test_kl_div.py"
  "flce|tests/test_fused_linear_cross_entropy.py tests/test_cross_entropy.py"
  "layers|tests/test_tiled_mlp.py tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py tests/test_fused_add_rms_norm.py tests/test_structural_patch.py"
)
for g in "${groups[@]}"; do
  name=${g%%|*}; args=${g#*|}
  if [[ "$args" == *" -k "* ]]; then files=${args%% -k *}; k=${args##* -k }; k=${k//_and_/ and }; k=${k//not_/not }
    timeout 190 python3 -m pytest $files -k "$k" -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  else
    timeout 190 python3 -m pytest $args -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  fi
done
BENCH="python3 benchmarks/bench_post_training.py"
timeout 185 $BENCH --providers ours,ours-1pass --sweep --warm-only --out "$L" --name warm_ours.json >"$L/warm_ours.log" 2>&1 &
timeout 185 $BENCH --providers liger085 --warm-only --out "$L" --name warm_liger.json >"$L/warm_liger.log" 2>&1 &
sleep 2
for i in $(seq 1 200); do [ "$(jobs -rp | wc -l)" -le 1 ] && break; sleep 1; done  # all but the MoE bench
for g in "${groups[@]}"; do name=${g%%|*}; echo "-- $name: $(grep -E '(passed|failed|error)' "$L/t_$name.log" | tail -1)"; grep -E "^(FAILED|ERROR)" "$L/t_$name.log" | head -12; done

echo "== post-training bench $(date -u +%H:%M:%S)"
timeout 140 $BENCH --losses dpo,grpo,jsd --sweep --no-errors --providers ours,ours-1pass,plain,liger085 \
  --out benchmarks/results/h200/post_training --name post_training.json >"$L/post_bench.log" 2>&1
echo "exit $?"; tail -42 "$L/post_bench.log"

for b in "fused_add_rms_norm 45" "qwen2vl_mrope 45" "tiled_mlp 80 --providers ours,ours_generic,ours_untiled,liger085,compile"; do
  set -- $b
  echo "== bench $1 $(date -u +%H:%M:%S)"
  timeout "$2" python3 "benchmarks/bench_$1.py" --graph --out "benchmarks/results/h200/$1" "${@:3}" >"$L/bench_$1.log" 2>&1
  echo "exit $?"; tail -12 "$L/bench_$1.log"
done
wait
echo "== moe $(date -u +%H:%M:%S)"; tail -22 "$L/moe_bench.log"
echo "== done $(date -u +%H:%M:%S)"
} 2>&1 | tee "$OUT/summary.log"
cp "$OUT/summary.log" "$L/"
tar czf "$OUT/all.tgz" "$L" benchmarks/results/h200 && rm -rf "$L"
