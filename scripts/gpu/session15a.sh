#!/usr/bin/env bash
# Session 15, ONE H200, <= 9.5 min: the whole test suite on the GPU (the last full GPU run was session 6),
# in six pytest processes side by side on the one device; logs under $OUT/a/. Four MoE compile cases ran
# out of memory beside the others in session 15 (alone they pass): re-run such failures alone.
set -uo pipefail
source "$(dirname "$0")/lib.sh" a
install_here
export OMP_NUM_THREADS=2
GROUPS_=(
  "tests/test_compile.py tests/test_compile_losses.py tests/test_compile_floor.py"
  "tests/test_compile_ops13.py tests/test_compile_post.py tests/test_structural_patch.py"
  "tests/test_convergence.py tests/test_convergence_moe.py tests/test_fused_moe.py"
  "tests/test_convergence_vlm.py tests/test_monkey_patch.py tests/test_trainer.py tests/test_patched_model_copy.py"
  "tests/test_rms_norm.py tests/test_layer_norm.py tests/test_rope.py tests/test_qwen2vl_mrope.py tests/test_llama4_rope.py tests/test_swiglu_geglu.py tests/test_relu_squared.py tests/test_fused_add_rms_norm.py tests/test_cross_entropy.py tests/test_fused_linear_cross_entropy.py tests/test_launch.py tests/test_impl_switch.py tests/test_mlp_modules.py tests/test_gated_reuse.py tests/test_tiled_mlp.py"
  "tests/test_chunked_distillation.py tests/test_chunked_grpo.py tests/test_chunked_preference.py tests/test_fused_linear_distill_ops.py tests/test_fused_linear_logprobs.py tests/test_grpo_loss_op.py tests/test_jsd.py tests/test_kl_div.py tests/test_tvd.py tests/test_preference_syncs.py tests/test_distributed.py tests/test_fsdp.py tests/test_tensor_parallel.py tests/test_api_names.py tests/test_demo.py tests/test_env_report.py tests/test_clients_import.py tests/test_llamafactory.py tests/test_llamafactory_moe.py tests/test_axolotl.py tests/test_trl_trainers.py"
)
for i in "${!GROUPS_[@]}"; do
  timeout 520 python3 -m pytest ${GROUPS_[$i]} $PT >"$L/group$i.log" 2>&1 &
done
wait
summarize group0 group1 group2 group3 group4 group5
date -u +%H:%M:%S
