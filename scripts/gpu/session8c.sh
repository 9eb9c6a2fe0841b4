#!/usr/bin/env bash
# Session 8, last GPU call, on TWO H200s (nvidia-h200-x2; carry .peer), under 10 minutes:
#   GPU 0: scripts/gpu/moe.sh (experts-block benchmark ours vs transformers vs Liger 0.8.5, then the
#          MoE end-to-end cases), alone on its GPU for clean timings;
#   GPU 1: every GPU test group at once (convergence text/MoE/VLM in fp32 and bf16, fused MoE, compile,
#          compiled new ops, post-training, the new layer kernels) with the post-training benchmark's
#          warm-up, then the post-training benchmark (JSD, DPO, GRPO, every loss type, Liger 0.8.5,
#          torch.compile), then the torch.compile benchmark (Llama-3.2-1B headline rows first).
# Everything under $OUT/all.tgz (the device returns few files) plus $OUT/summary.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/out}
L="$OUT/logs"
mkdir -p "$L"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TORCHINDUCTOR_COMPILE_THREADS=4
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.device_count(), torch.cuda.get_device_name())" | tee "$L/versions.txt"
bash benchmarks/setup_peers.sh >"$L/setup_peers.log" 2>&1 || echo "setup_peers failed"

(CUDA_VISIBLE_DEVICES=0 PEER_S=45 timeout 570 bash scripts/gpu/moe.sh >"$L/moe.log" 2>&1; echo "moe.sh exit $?" >>"$L/moe.log") &

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
  "compile_ops|tests/test_compile.py -k not_patched_and_not_family"
  "compile_models|tests/test_compile.py -k patched_and_not_family"
  "compile_families|tests/test_compile.py -k family"
  "compile_new|tests/test_compile_ops13.py tests/test_compile_post.py"
  "post|tests/test_chunked_preference.py tests/test_chunked_grpo.py tests/test_chunked_distillation.py tests/test_fused_linear_distill_ops.py tests/test_jsd.py tests/test_grpo_loss_op.py tests/test_tvd.py tests/test_kl_div.py tests/test_fused_linear_logprobs.py"
  "layers|tests/test_tiled_mlp.py tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py tests/test_fused_add_rms_norm.py tests/test_structural_patch.py tests/test_api_names.py"
)
for g in "${groups[@]}"; do
  name=${g%%|*}; args=${g#*|}
  # -k expressions are written with _ for spaces (one word per group line)
  if [[ "$args" == *" -k "* ]]; then files=${args%% -k *}; k=${args##* -k }; k=${k//_and_/ and }; k=${k//not_/not }
    timeout 205 python3 -m pytest $files -k "$k" -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  else
    timeout 205 python3 -m pytest $args -p no:cacheprovider -o addopts="" -q -rfE --durations=3 >"$L/t_$name.log" 2>&1 &
  fi
done
BENCH="python3 benchmarks/bench_post_training.py"
timeout 200 $BENCH --providers ours --sweep --warm-only --out "$L" --name warm_ours.json >"$L/warm_ours.log" 2>&1 &
timeout 200 $BENCH --providers liger085 --warm-only --out "$L" --name warm_liger.json >"$L/warm_liger.log" 2>&1 &
wait -n 2>/dev/null; sleep 1
for i in $(seq 1 210); do [ "$(jobs -rp | wc -l)" -le 1 ] && break; sleep 1; done  # all but moe.sh
for g in "${groups[@]}"; do name=${g%%|*}; echo "-- $name: $(grep -E '(passed|failed|error)' "$L/t_$name.log" | tail -1)"; grep -E "^(FAILED|ERROR)" "$L/t_$name.log" | head -12; done

echo "== post-training bench $(date -u +%H:%M:%S)"
timeout 165 $BENCH --losses jsd,dpo,grpo --sweep --providers ours,ours-L1024,plain,liger085,compile \
  --out benchmarks/results/h200/post_training --name post_training.json >"$L/post_bench.log" 2>&1
echo "exit $?"; tail -40 "$L/post_bench.log"
echo "== compile bench $(date -u +%H:%M:%S)"
timeout 150 python3 benchmarks/bench_compile.py --out benchmarks/results/h200 --timeout-s 75 --warmup 2 --steps 4 >"$L/compile_bench.log" 2>&1
echo "exit $?"; grep -E "^  [a-z]" "$L/compile_bench.log"
wait
echo "== moe $(date -u +%H:%M:%S)"; tail -40 "$L/moe.log"
cp -r "$OUT"/moe "$L/" 2>/dev/null
tar czf "$OUT/all.tgz" "$L" benchmarks/results/h200 && rm -rf "$L" "$OUT/moe"
echo "== done $(date -u +%H:%M:%S)"
