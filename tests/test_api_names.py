"""Every name integrators import, from its exact path, with the peer's signature.

The list: issue 11's "What integrators import and we lack", and every name of
``API_LIGER085.md`` sections 1.1-1.10 that belongs to the ops we have (RMSNorm, LayerNorm, RoPE,
SwiGLU, GeGLU, cross-entropy, fused linear cross-entropy) and to the 14 model families of
``transformers/model_specs.py``. ``EXCLUDED`` lists the names of those sections that later
issues bring, with the reason.

Signature rule (code written for Liger Kernel 0.8.5 calls ours unchanged): the peer's
positional parameters lead ours in the same order, every default the peer has is ours too,
parameters we add come after them and have defaults, and keyword-only / ``*args`` / ``**kwargs``
are accepted where the peer accepts them. ``accepts`` specs (the per-family forwards, which are
one generic forward here) only require every peer parameter to be accepted by keyword.
"""

import ast
import importlib
import inspect

import pytest
import torch
from parity import DEVICE, assert_matches, randn

from liger_kernel.utils import infer_device

FAMILIES = (
    "llama",
    "mistral",
    "ministral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "granite",
    "olmo2",
    "smollm3",
)

APPLY = "(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True, model=None)"
APPLY_GEGLU = "(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, geglu=True, model=None)"
# The dense text families of issue 13 and Liger Kernel 0.8.5's signatures of their apply functions
# (API_LIGER085.md §2.2); the per-family forward modules (§1.10) are the generic forward.
APPLY_NO_ROPE = (
    "(rope=False, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True, model=None)"
)
DENSE_FAMILIES = {
    "exaone4": APPLY,
    "falcon_h1": APPLY,
    "gemma4_text": APPLY_NO_ROPE.replace("swiglu", "geglu"),
    "glm4": APPLY_NO_ROPE,
    "hunyuan_v1_dense": APPLY,
    "nemotron": "(relu_squared=True, cross_entropy=False, fused_linear_cross_entropy=True, model=None, **kwargs)",
    "olmo3": APPLY,
    "qwen3_5": APPLY_NO_ROPE,
    "qwen3_next": APPLY_NO_ROPE,
}
# The vision-language families of issue 13: Liger Kernel 0.8.5's signatures (API_LIGER085.md §2.2).
LOSSES = "cross_entropy=False, fused_linear_cross_entropy=True"
VISION_LANGUAGE_FAMILIES = {
    "gemma3": f"(rope=True, {LOSSES}, layer_norm=True, rms_norm=True, geglu=True, model=None)",
    "gemma4": f"(rope=False, {LOSSES}, layer_norm=False, rms_norm=True, geglu=True, model=None)",
    "glm4v": f"(rope=False, {LOSSES}, rms_norm=True, swiglu=True, model=None)",
    "internvl": f"({LOSSES}, rms_norm=True, layer_norm=True, model=None, **kwargs)",
    "llama4": f"(rope=True, {LOSSES}, rms_norm=True, swiglu=True, model=None, layer_norm=True)",
    "llava": f"({LOSSES}, model=None, **kwargs)",
    "mllama": f"(rope=True, {LOSSES}, layer_norm=True, rms_norm=True, swiglu=True, model=None)",
    "paligemma": f"(rope=True, {LOSSES}, layer_norm=True, rms_norm=True, geglu=True, model=None)",
    "pixtral": "(rope=True, rms_norm=True, swiglu=True, model=None)",
    "qwen2_5_vl": f"(rope=True, {LOSSES}, rms_norm=True, swiglu=True, model=None)",
    "qwen2_vl": f"(rope=True, {LOSSES}, rms_norm=True, layer_norm=True, swiglu=True, model=None)",
    "qwen3_vl": f"(rope=True, {LOSSES}, rms_norm=True, swiglu=False, model=None)",
    "smolvlm": f"({LOSSES}, rms_norm=True, layer_norm=True, model=None, **kwargs)",
}
VISION_LANGUAGE_FORWARDS = [  # (module, forward name): the peer's names, ours the generic forwards
    *[
        (family, "lce_forward")
        for family in (
            "glm4v",
            "internvl",
            "llama4",
            "llava",
            "mllama",
            "paligemma",
            "qwen2_vl",
            "qwen2_5_vl",
            "qwen3_vl",
            "smolvlm",
        )
    ],
    ("gemma3", "multimodal_forward"),
    ("gemma4", "multimodal_forward"),
    *[  # the generic forward under its own name too (Llama 4's multimodal forward stays stock)
        (family, "lce_forward_for_multimodal")
        for family in sorted(VISION_LANGUAGE_FAMILIES)
        if family not in ("llama4", "pixtral")
    ],
]
DENSE_FORWARDS = {  # module -> forward name
    "exaone4": "lce_forward",
    "falcon_h1": "lce_forward",
    "gemma4": "causal_forward",
    "glm4": "lce_forward",
    "hunyuan_v1": "lce_forward",
    "nemotron": "lce_forward",
    "olmo3": "lce_forward",
    "qwen3_5": "lce_forward",
    "qwen3_next": "lce_forward",
}
# Mixture of experts (issue 14): Liger Kernel 0.8.5's apply signatures (§2.2) and forward modules (§1.10).
MOE_FAMILIES = {
    "gpt_oss": APPLY.replace("swiglu=True", "swiglu=False"),
    "deepseek_v2": APPLY_NO_ROPE,
    "deepseek_v3": APPLY_NO_ROPE,
    "deepseek_v4": APPLY_NO_ROPE.replace("swiglu=True", "swiglu=False"),
    "qwen3_5_moe": APPLY_NO_ROPE,
    "hunyuan_v1_moe": APPLY,
    "glm4v_moe": APPLY_NO_ROPE,
    "qwen3_vl_moe": APPLY,
}
MOE_FORWARDS = ("gpt_oss", "deepseek_v2", "deepseek_v3", "deepseek_v4", "qwen3_5_moe")
LCE_FORWARD = (
    "accepts:(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,"
    " labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,"
    " cache_position=None, logits_to_keep=0, skip_logits=None, **kwargs)"
)
LCE_FORWARD_MOE = LCE_FORWARD.replace(
    "output_hidden_states=None,", "output_hidden_states=None, output_router_logits=None,"
)
ROPE = "(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None)"
MROPE = "(q, k, cos, sin, mrope_section, unsqueeze_dim=1)"
CE = (
    "(_input, target, weight, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction='mean',"
    " softcap=None, return_z_loss=False, return_token_accuracy=False, return_predicted_tokens=False)"
)
FLCE_ARGS = (
    "ce_weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction='mean', softcap=None,"
    " return_z_loss=False, accum_dtype=None, use_token_scaling=False, return_token_accuracy=False,"
    " return_predicted_tokens=False"
)
FLCE = f"(_input, weight, target, bias=None, {FLCE_ARGS}, ce_impl=None, ce_mode=None, chunk_mem_const=1)"
RMS_NORM = (
    "(hidden_size, eps=1e-06, offset=0.0, casting_mode='llama', init_fn='ones', in_place=True, row_mode=None,"
    " elementwise_affine=True)"
)
IMPL_KW = "*, impl=None, mode=None, backend=None"
CE_ARGS = (
    "weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction='mean', softcap=None,"
    " return_z_loss=False, return_token_accuracy=False, return_predicted_tokens=False"
)

T = "liger_kernel.transformers"
OPS = "liger_kernel.ops"
CL = "liger_kernel.chunked_loss"


DISTILL_INIT = (
    "(weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, ignore_index=-100, temperature=1.0, compiled=True,"
    " chunk_size=1024, return_soft_hard_loss=False)"
)
DISTILL_MODULE_FORWARD = (
    "(student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias=None, teacher_bias=None)"
)
DISTILL_FUNCTION_FORWARD = (
    "(student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias, teacher_bias,"
    " weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, ignore_index=-100, temperature=1.0, compiled=True,"
    " chunk_size=1024, return_soft_hard_loss=False)"
)
DISTILL_JSD_HOOK = "(student_logits, teacher_logits, beta=0.5, target=None, ignore_index=-100)"
DISTILL_COS_HOOK = "(student_logits, teacher_logits, target=None, ignore_index=None, beta=1.0)"
DISTILL_BASE_FORWARD = (
    "(cls, ctx, student_input, student_weight, teacher_input, teacher_weight, target, student_bias=None,"
    " teacher_bias=None, chunk_size=1024, ignore_index=-100, weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5,"
    " compute_ce_loss=True, temperature=1.0, compiled=True, return_soft_hard_loss=False, **loss_kwargs)"
)
DISTILL_CHUNK_FORWARD = (
    "(student_input_chunk, student_weight, teacher_input_chunk, teacher_weight, target_chunk, student_bias=None,"
    " teacher_bias=None, ignore_index=-100, compute_ce_loss=True)"
)
DISTILL_COMPUTE_LOSS = (
    "(student_input_chunk, student_weight, teacher_input_chunk, teacher_weight, target_chunk, student_bias=None,"
    " teacher_bias=None, distillation_loss_fn=None, full_target=None, ignore_index=-100, weight_hard_loss=0.5,"
    " weight_soft_loss=0.5, compute_ce_loss=True, temperature=1, **loss_kwargs)"
)


def module_class(path, name, init, forward):
    return [(path, name, "__init__", init), (path, name, "forward", forward)]


# Issue 12 (item 2): the divergence losses, their fused-head forms and their ops names (§1.3, §1.6, §5.2).
FLJSD_ARGS = "shift_labels=None, jsd_beta=0.5, ignore_index=-100, temperature=1.0, accum_dtype=None"
FLKL_ARGS = "shift_labels=None, reduction='batchmean', ignore_index=-100, temperature=1.0, eps=1e-10, accum_dtype=None"
DIVERGENCE = [
    *module_class(T, "LigerKLDIVLoss", "(eps=1e-10, *args, **kwargs)", "(y_pred, y_true)"),
    *module_class(T, "LigerJSD", "(beta=0.5, ignore_index=-100)", "(log_q, log_p, shift_labels=None)"),
    *module_class(T, "LigerTVDLoss", "(reduction='batchmean', ignore_index=-100)", "(p, q, shift_labels=None)"),
    *module_class(
        T,
        "LigerFusedLinearJSD",
        "(jsd_beta=0.5, ignore_index=-100, temperature=1.0, accum_dtype=None)",
        "(student_input, student_weight, teacher_input, teacher_weight, shift_labels)",
    ),
    *module_class(
        T,
        "LigerFusedLinearKLDivLoss",
        "(reduction='batchmean', ignore_index=-100, temperature=1.0, eps=1e-10, accum_dtype=None)",
        "(student_input, student_weight, target, shift_labels=None)",
    ),
    *module_class(T, "LigerFusedCETVDLoss", "(ignore_index=-100)", "(student_logits, teacher_logits, target)"),
    (
        f"{T}.functional",
        "liger_kl_div",
        None,
        "(input, target, size_average=True, reduce=True, reduction='mean', log_target=False, eps=1e-10)",
    ),
    (f"{T}.functional", "liger_jsd", None, "(input, target, shift_labels=None, beta=0.5, ignore_index=-100)"),
    (f"{T}.functional", "liger_tvd", None, "(input, target, shift_labels=None, reduction='mean', ignore_index=-100)"),
    (
        f"{T}.functional",
        "liger_fused_linear_jsd",
        None,
        f"(student_input, student_weight, teacher_input, teacher_weight, {FLJSD_ARGS})",
    ),
    (f"{T}.functional", "liger_fused_linear_kl_div", None, f"(student_input, student_weight, target, {FLKL_ARGS})"),
    *[
        entry
        for module, name, member, spec in [
            (
                "kl_div",
                "LigerKLDivLossFunction",
                "forward",
                "(y_pred, y_true, reduction='batchmean', log_target=False, eps=1e-10)",
            ),
            (
                "jsd",
                "LigerJSDFunction",
                "forward",
                "(_input, target, shift_labels=None, beta=0.5, ignore_index=-100, jsd_impl=None, jsd_mode=None)",
            ),
            (
                "jsd",
                "jsd_forward",
                None,
                "(_input, target, shift_labels, beta, ignore_index, has_label, jsd_impl=None, jsd_mode=None)",
            ),
            ("jsd", "jsd_backward", None, "(dX, grad_output)"),
            (
                "tvd",
                "LigerTVDLossFunction",
                "forward",
                "(p, q, shift_labels=None, reduction='batchmean', ignore_index=-100)",
            ),
            (
                "fused_linear_jsd",
                "LigerFusedLinearJSDFunction",
                "forward",
                f"(student_input, student_weight, teacher_input, teacher_weight, {FLJSD_ARGS}, jsd_impl=None,"
                " jsd_mode=None)",
            ),
            (
                "fused_linear_jsd",
                "fused_linear_jsd_forward",
                None,
                "(student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, ignore_index,"
                " has_label, temperature, jsd_impl=None, jsd_mode=None, accum_dtype=None)",
            ),
            ("fused_linear_jsd", "fused_linear_jsd_backward", None, "(grad_output, grad_input, grad_weight)"),
            (
                "fused_linear_kl_div",
                "LigerFusedLinearKLDivFunction",
                "forward",
                f"(student_input, student_weight, target, {FLKL_ARGS})",
            ),
            (
                "fused_linear_kl_div",
                "fused_linear_kl_div_forward",
                None,
                "(student_input, student_weight, target, shift_labels, reduction, ignore_index, has_label, temperature,"
                " eps, accum_dtype=None)",
            ),
            ("fused_linear_kl_div", "fused_linear_kl_div_backward", None, "(grad_output, grad_input, grad_weight)"),
            (
                "fused_ce_tvd",
                "LigerFusedCETVDFunction",
                "forward",
                "(student_logits, teacher_logits, target, ignore_index=-100)",
            ),
            ("fused_ce_tvd", "fused_ce_tvd_forward", None, "(student_logits, teacher_logits, target, ignore_index)"),
            (
                "fused_ce_tvd",
                "fused_ce_tvd_backward",
                None,
                "(grad_ce, grad_tvd, student_logits, teacher_logits, target, student_lse, teacher_lse, sigma,"
                " ignore_index)",
            ),
        ]
        for entry in ((OPS, name, member, spec), (f"{OPS}.{module}", name, member, spec))
    ],
]


# Issue 14 (item 1): the fused MoE experts block (§1.4 attribute, §1.6, §5.2).
MOE = [
    *module_class(T, "LigerExperts", "(config)", "(hidden_states, top_k_index, top_k_weights)"),
    *module_class(f"{T}.swiglu", "LigerExperts", "(config)", "(hidden_states, top_k_index, top_k_weights)"),
    *[
        (path, "LigerFusedMoEFunction", "forward", "(x, gate_up_proj, down_proj, top_k_index, top_k_weights)")
        for path in (OPS, f"{OPS}.fused_moe")
    ],
]


# (module path, name, member, peer signature or None for presence only)
NAMES = [
    *DIVERGENCE,
    *MOE,
    # §1.1 the package: the implementation switch and the functional API
    ("liger_kernel", "set_impl", None, "(name)"),
    ("liger_kernel", "get_impl", None, "()"),
    ("liger_kernel", "available_impls", None, "(op_name, device=None)"),
    ("liger_kernel", "set_backend", None, "(name)"),
    ("liger_kernel", "get_backend", None, "()"),
    ("liger_kernel", "available_backends", None, "(op_name, device=None)"),
    ("liger_kernel", "functional", None, None),
    # §1.11 liger_kernel.functional, for the ops we have
    ("liger_kernel.functional", "cross_entropy", None, f"(input, target, {CE_ARGS}, {IMPL_KW})"),
    (
        "liger_kernel.functional",
        "fused_linear_cross_entropy",
        None,
        f"(_input, weight, target, bias=None, {FLCE_ARGS}, {IMPL_KW})",
    ),
    ("liger_kernel.functional", "geglu", None, f"(a, b, {IMPL_KW})"),
    ("liger_kernel.functional", "layer_norm", None, f"(x, weight, bias=None, eps=1e-06, {IMPL_KW})"),
    (
        "liger_kernel.functional",
        "rms_norm",
        None,
        "(x, weight, eps=1e-06, *, offset=0.0, casting_mode='llama', in_place=False, row_mode=None, impl=None,"
        " mode=None, backend=None)",
    ),
    ("liger_kernel.functional", "rope", None, f"(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, {IMPL_KW})"),
    ("liger_kernel.functional", "swiglu", None, f"(a, b, gate_multiplier=1.0, down_multiplier=1.0, {IMPL_KW})"),
    (
        "liger_kernel.functional",
        "fused_add_rms_norm",
        None,
        f"(X, R, W, eps=1e-06, offset=0.0, casting_mode='llama', in_place=False, {IMPL_KW})",
    ),
    # §3(f) the environment report
    ("liger_kernel.env_report", "print_env_report", None, "()"),
    # §1.2 liger_kernel.transformers
    (T, "_apply_liger_kernel", None, "(model_type, **kwargs)"),
    (T, "_apply_liger_kernel_to_instance", None, "(model, **kwargs)"),
    (T, "AutoLigerKernelForCausalLM", "from_pretrained", "(pretrained_model_name_or_path, *model_args, **kwargs)"),
    (T, "AutoLigerKernelForCausalLM", "from_config", "(config, **kwargs)"),
    (T, "is_transformers_available", None, "()"),
    (T, "liger_rotary_pos_emb", None, ROPE),
    *module_class(T, "LigerBlockSparseTop2MLP", "(config)", "(x)"),
    *module_class(
        T,
        "LigerCrossEntropyLoss",
        "(weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction='mean', softcap=None,"
        " return_z_loss=False, return_token_accuracy=False, return_predicted_tokens=False)",
        "(_input, target)",
    ),
    *module_class(T, "LigerFusedLinearCrossEntropyLoss", f"({FLCE_ARGS})", "(lin_weight, _input, target, bias=None)"),
    *module_class(T, "LigerGEGLUMLP", "(config)", "(x)"),
    *module_class(
        T,
        "LigerLayerNorm",
        "(hidden_size, eps=1e-06, bias=False, init_fn='ones', impl=None, mode=None, backend=None)",
        "(hidden_states)",
    ),
    *module_class(T, "LigerMLP", "(config)", "(x)"),
    *module_class(T, "LigerPhi3SwiGLUMLP", "(config)", "(x)"),
    *module_class(T, "LigerQwen3MoeSwiGLUMLP", "(config, intermediate_size=None)", "(x)"),
    *module_class(T, "LigerRMSNorm", RMS_NORM, "(hidden_states)"),
    *module_class(T, "LigerSwiGLUMLP", "(config, intermediate_size=None)", "(x)"),
    *[
        (T, f"apply_liger_kernel_to_{family}", None, APPLY_GEGLU if family.startswith("gemma") else APPLY)
        for family in FAMILIES
        if family != "granite"  # ours defaults to the fused loss: a deliberate difference (see its docstring)
    ],
    (T, "apply_liger_kernel_to_granite", None, None),
    *[(T, f"apply_liger_kernel_to_{family}", None, spec) for family, spec in DENSE_FAMILIES.items()],
    *[(T, f"apply_liger_kernel_to_{family}", None, spec) for family, spec in VISION_LANGUAGE_FAMILIES.items()],
    *[(f"{T}.model.{module}", name, None, LCE_FORWARD) for module, name in VISION_LANGUAGE_FORWARDS],
    *[
        (f"{T}.model.{module}", name, None, LCE_FORWARD_MOE if module == "qwen3_next" else LCE_FORWARD)
        for module, name in DENSE_FORWARDS.items()
    ],
    *module_class(T, "LigerReLUSquared", "()", "(x)"),
    *module_class(f"{T}.relu_squared", "LigerReLUSquared", "()", "(x)"),
    (f"{T}.functional", "liger_relu_squared", None, "(x)"),
    *[(path, "LigerReLUSquaredFunction", "forward", "(X)") for path in (OPS, f"{OPS}.relu_squared")],
    *[(path, "relu_squared_forward", None, "(X)") for path in (OPS, f"{OPS}.relu_squared")],
    *[(path, "relu_squared_backward", None, "(X, dY)") for path in (OPS, f"{OPS}.relu_squared")],
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForGlm4",
        "(hidden_size, eps=1e-06, offset=0.0, casting_mode='llama', init_fn='ones', in_place=False, row_mode=None)",
        "(hidden_states)",
    ),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForQwen3Next",
        "(hidden_size, eps=1e-06, offset=1.0, casting_mode='gemma', init_fn='zeros', in_place=False, row_mode=None)",
        "(hidden_states)",
    ),
    *module_class(f"{T}.swiglu", "LigerFalconH1SwiGLUMLP", "(config)", "(x)"),
    *module_class(f"{T}.mlp", "LigerFalconH1MLP", "(config)", "(x)"),
    # §1.3 liger_kernel.transformers.functional
    (
        f"{T}.functional",
        "CrossEntropyOutput",
        "__init__",
        "(loss, z_loss=None, token_accuracy=None, predicted_tokens=None)",
    ),
    (
        f"{T}.functional",
        "liger_cross_entropy",
        None,
        "(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction='mean',"
        " label_smoothing=0.0, lse_square_scale=0.0, softcap=None, return_z_loss=False, return_token_accuracy=False,"
        " return_predicted_tokens=False)",
    ),
    (
        f"{T}.functional",
        "liger_fused_linear_cross_entropy",
        None,
        f"(input, weight, target, bias=None, {FLCE_ARGS}, chunk_mem_const=1)",
    ),
    (f"{T}.functional", "liger_geglu", None, "(a, b)"),
    (f"{T}.functional", "liger_layer_norm", None, "(X, W, B, eps)"),
    (f"{T}.functional", "liger_rms_norm", None, "(X, W, eps, offset=0.0, casting_mode='llama', in_place=True)"),
    (f"{T}.functional", "liger_rope", None, ROPE),
    (f"{T}.functional", "liger_swiglu", None, "(a, b)"),
    *[
        (f"{T}.functional", name, None, None)
        for name in (
            "LigerCrossEntropyFunction",
            "LigerFusedLinearCrossEntropyFunction",
            "LigerGELUMulFunction",
            "LigerLayerNormFunction",
            "LigerRMSNormFunction",
            "LigerRopeFunction",
            "LigerSiLUMulFunction",
        )
    ],
    # §1.4 the modules of liger_kernel.transformers
    *module_class(
        f"{T}.cross_entropy",
        "LigerCrossEntropyLoss",
        "(weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction='mean', softcap=None,"
        " return_z_loss=False, return_token_accuracy=False, return_predicted_tokens=False)",
        "(_input, target)",
    ),
    *module_class(
        f"{T}.fused_linear_cross_entropy",
        "LigerFusedLinearCrossEntropyLoss",
        f"({FLCE_ARGS})",
        "(lin_weight, _input, target, bias=None)",
    ),
    *module_class(f"{T}.geglu", "LigerGEGLUMLP", "(config)", "(x)"),
    *module_class(f"{T}.geglu", "LigerGEGLUMLPForGemma4", "(config, layer_idx=None)", "(x)"),
    *module_class(
        f"{T}.layer_norm",
        "LigerLayerNorm",
        "(hidden_size, eps=1e-06, bias=False, init_fn='ones', impl=None, mode=None, backend=None)",
        "(hidden_states)",
    ),
    *module_class(f"{T}.mlp", "LigerMLP", "(config)", "(x)"),
    *module_class(f"{T}.rms_norm", "LigerRMSNorm", RMS_NORM, "(hidden_states)"),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForGemma",
        "(hidden_size, eps=1e-06, offset=1.0, casting_mode='gemma', init_fn='zeros', in_place=True, row_mode=None)",
        "(hidden_states)",
    ),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForGemma2",
        "(hidden_size, eps=1e-06, offset=1.0, casting_mode='gemma', init_fn='zeros', in_place=False, row_mode=None)",
        "(hidden_states)",
    ),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForGemma3",
        "(dim, eps=1e-06, offset=1.0, casting_mode='gemma', init_fn='zeros', in_place=False)",
        "(hidden_states)",
    ),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForGemma4",
        "(dim, eps=1e-06, offset=0.0, casting_mode='gemma', init_fn='ones', in_place=False, with_scale=True)",
        "(hidden_states)",
    ),
    *module_class(
        f"{T}.rms_norm",
        "LigerRMSNormForOlmo2",
        "(hidden_size, eps=1e-06, offset=0.0, casting_mode='llama', init_fn='ones', in_place=False, row_mode=None)",
        "(hidden_states)",
    ),
    (f"{T}.rope", "liger_rotary_pos_emb", None, ROPE),
    (f"{T}.rope", "liger_rotary_pos_emb_gpt_oss", None, "(q, k, cos, sin)"),
    (f"{T}.rope", "liger_rotary_pos_emb_vision", None, "(q, k, cos, sin)"),
    *module_class(f"{T}.swiglu", "LigerBlockSparseTop2MLP", "(config)", "(x)"),
    *module_class(f"{T}.swiglu", "LigerHunyuanV1SwiGLUMLP", "(config, layer_idx=None, is_shared_mlp=False)", "(x)"),
    *module_class(f"{T}.swiglu", "LigerPhi3SwiGLUMLP", "(config)", "(x)"),
    *module_class(f"{T}.swiglu", "LigerQwen3MoeSwiGLUMLP", "(config, intermediate_size=None)", "(x)"),
    *module_class(f"{T}.swiglu", "LigerSwiGLUMLP", "(config, intermediate_size=None)", "(x)"),
    # §1.6 the liger_kernel.ops namespace (each also from its op module, §1.7.1)
    *[
        (path, name, member, spec)
        for module, name, member, spec in [
            ("cross_entropy", "LigerCrossEntropyFunction", "forward", CE),
            (
                "cross_entropy",
                "cross_entropy_forward",
                None,
                "(_input, target, weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,"
                " return_z_loss, return_token_accuracy=False, return_predicted_tokens=False)",
            ),
            ("cross_entropy", "cross_entropy_backward", None, "(_input, grad_output)"),
            ("fused_linear_cross_entropy", "LigerFusedLinearCrossEntropyFunction", "forward", FLCE),
            (
                "fused_linear_cross_entropy",
                "fused_linear_cross_entropy_forward",
                None,
                "(_input, weight, target, ce_weight=None, bias=None, ignore_index=-100, lse_square_scale=0.0,"
                " label_smoothing=0.0, reduction='mean', softcap=None, return_z_loss=False, accum_dtype=None,"
                " use_token_scaling=False, return_token_accuracy=False, return_predicted_tokens=False, ce_impl=None,"
                " ce_mode=None, token_grad_output=None, compute_gradients=None, weight_requires_grad=None,"
                " chunk_mem_const=1)",
            ),
            (
                "fused_linear_cross_entropy",
                "fused_linear_cross_entropy_backward",
                None,
                "(grad_output, grad_input, grad_weight, grad_bias)",
            ),
            ("geglu", "LigerGELUMulFunction", "forward", "(a, b)"),
            ("geglu", "geglu_forward", None, "(a, b)"),
            ("geglu", "geglu_backward", None, "(a, b, dc)"),
            ("layer_norm", "LigerLayerNormFunction", "forward", "(X, W, B, eps)"),
            ("layer_norm", "layer_norm_forward", None, "(X, W, B, eps)"),
            ("layer_norm", "layer_norm_backward", None, "(dY, X, W, B, Mean, RSTD, needs_dw=None, needs_db=None)"),
            (
                "rms_norm",
                "LigerRMSNormFunction",
                "forward",
                "(X, W, eps, offset=0.0, casting_mode='llama', in_place=True, row_mode=None)",
            ),
            ("rms_norm", "rms_norm_forward", None, "(X, W, eps, offset, casting_mode, row_mode)"),
            (
                "rms_norm",
                "rms_norm_backward",
                None,
                "(dY, X, W, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, in_place, row_mode, needs_dw=None)",
            ),
            ("rope", "LigerRopeFunction", "forward", ROPE),
            ("rope", "rope_forward", None, ROPE),
            ("rope", "rope_backward", None, "(dq, dk, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None)"),
            ("swiglu", "LigerSiLUMulFunction", "forward", "(a, b, gate_multiplier=1.0, down_multiplier=1.0)"),
            ("swiglu", "LigerFusedGateUpSiLUMulFunction", "forward", "(y, in_place=False)"),
            ("swiglu", "swiglu_forward", None, "(a, b, gate_multiplier=1.0)"),
            ("swiglu", "swiglu_backward", None, "(a, b, dc, gate_multiplier=1.0)"),
        ]
        for path in (OPS, f"{OPS}.{module}")
    ],
    # §1.7.1 further names of our op modules
    (f"{OPS}.cross_entropy", "liger_cross_entropy_kernel", None, None),
    (f"{OPS}.swiglu", "swiglu_fused_gate_up_forward", None, None),
    (f"{OPS}.swiglu", "swiglu_fused_gate_up_backward", None, None),
    (f"{OPS}.swiglu", "silu", None, None),
    # §1.7.3 liger_kernel.ops.utils
    (f"{OPS}.utils", "amp_custom_fwd", None, f"(fwd=None, *, device_type='{infer_device()}', cast_inputs=None)"),
    (f"{OPS}.utils", "amp_custom_bwd", None, f"(bwd=None, *, device_type='{infer_device()}')"),
    (f"{OPS}.utils", "calculate_settings", None, "(n)"),
    (f"{OPS}.utils", "compare_version", None, "(package, operator, target)"),
    (f"{OPS}.utils", "device_context", None, "(device)"),
    (
        f"{OPS}.utils",
        "element_mul_kernel",
        None,
        "(X_ptr, X_stride, grad_output_ptr, n_cols, BLOCK_SIZE, X_col_stride=1)",
    ),
    (f"{OPS}.utils", "ensure_contiguous", None, "(fn)"),
    (f"{OPS}.utils", "get_amp_custom_fwd_bwd", None, "()"),
    (f"{OPS}.utils", "get_npu_core_count", None, "(default=20)"),
    (f"{OPS}.utils", "is_hip", None, "()"),
    (f"{OPS}.utils", "set_large_grf_mode", None, "(kernel_args)"),
    (f"{OPS}.utils", "torch_to_triton_dtype", None, None),
    # §1.7.4 the implementation registry (Axolotl 0.21 reads IMPL_REGISTRY)
    *[
        (f"{OPS}.backends.registry", name, None, None)
        for name in ("IMPL_REGISTRY", "ImplInfo", "LIGER_KERNEL_IMPL_ENV", "register_impl", "select_impl")
    ],
    # §1.8 liger_kernel.utils
    ("liger_kernel.utils", "PEFT_AVAILABLE", None, None),
    ("liger_kernel.utils", "get_total_gpu_memory", None, "()"),
    ("liger_kernel.utils", "infer_comm_backend", None, "()"),
    ("liger_kernel.utils", "infer_device", None, "()"),
    ("liger_kernel.utils", "infer_device_arch", None, "(device_id=0)"),
    ("liger_kernel.utils", "is_npu_available", None, "()"),
    ("liger_kernel.utils", "is_peft_available", None, "()"),
    (
        "liger_kernel.utils",
        "transformers_version_dispatch",
        None,
        "(required_version, before_fn, after_fn, before_args=(), after_args=(), before_kwargs=None, after_kwargs=None)",
    ),
    # §1.9 trainer integration, FSDP, auto model
    (f"{T}.trainer_integration", "_apply_liger_kernel", None, "(model_type, **kwargs)"),
    (f"{T}.fsdp", "_FSDPForwardRedirection", "__call__", "(wrapper_module, method, *args, **kwargs)"),
    (
        f"{T}.auto_model",
        "AutoLigerKernelForCausalLM",
        "from_pretrained",
        "(pretrained_model_name_or_path, *model_args, **kwargs)",
    ),
    (f"{T}.auto_model", "AutoLigerKernelForCausalLM", "from_config", "(config, **kwargs)"),
    # §1.10 liger_kernel.transformers.model.*: the 14 families' forwards (granite has none in the peer)
    *[
        (
            f"{T}.model.{family}",
            "lce_forward",
            None,
            LCE_FORWARD_MOE if family.endswith(("moe", "mixtral")) else LCE_FORWARD,
        )
        for family in FAMILIES
        if family not in ("granite", "gemma3_text")
    ],
    (f"{T}.model.gemma3", "causal_forward", None, LCE_FORWARD.replace("**kwargs", "**loss_kwargs")),
    *[
        (
            f"{T}.model.{family}",
            "lce_maybe_trainable_lm_head",
            None,
            "(self, hidden_states, hidden_size, labels, shift_labels, **loss_kwargs)",
        )
        for family in ("llama", "smollm3")
    ],
    (
        f"{T}.model.loss_utils",
        "LigerForCausalLMLoss",
        None,
        "(hidden_states, lm_head_weight, labels, hidden_size, num_items_in_batch=None, ignore_index=-100,"
        " shift_labels=None, final_logit_softcapping=None, return_token_accuracy=False, return_predicted_tokens=False,"
        " **kwargs)",
    ),
    (
        f"{T}.model.loss_utils",
        "fixed_fused_linear_cross_entropy",
        None,
        "(hidden_states, lm_head_weight, target, num_items_in_batch=None, ignore_index=-100,"
        " final_logit_softcapping=None, accum_dtype=None, return_token_accuracy=False, return_predicted_tokens=False,"
        " **kwargs)",
    ),
    (f"{T}.model.loss_utils", "unpack_cross_entropy_result", None, "(result)"),
    (f"{T}.model.output_classes", "LigerCausalLMOutputWithPast", None, None),
    (f"{T}.model.output_classes", "LigerMoeCausalLMOutputWithPast", None, None),
    # §1.5 / §5.1 / §5.2 GRPO: the chunked loss, its PPO base, helpers and the op on logits
    *module_class(
        f"{CL}.grpo_loss",
        "LigerFusedLinearGRPOLoss",
        "(beta=0.04, compiled=True, use_ref_model=True, chunk_size=1, epsilon_low=0.2, epsilon_high=0.2,"
        " loss_type='dapo', max_completion_length=None, importance_sampling_level='token',"
        " sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, temperature=1.0, delta=None,"
        " use_bias_correction_kl=False, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,"
        " vespo_lambda_neg=2.0)",
        "(_input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,"
        " ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None,"
        " ref_bias=None, vllm_is_ratio=None, num_items_in_batch=None)",
    ),
    (CL, "LigerFusedLinearGRPOLoss", None, None),
    (
        f"{CL}.functional",
        "LigerFusedLinearGRPOFunction",
        "forward",
        "(_input, weight, selected_token_ids, attention_mask, advantages, bias=None,"
        " ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None,"
        " ref_bias=None, beta=0.04, epsilon_low=0.2, epsilon_high=0.2, loss_type='dapo',"
        " max_completion_length=None, importance_sampling_level='token', sapo_temperature_pos=1.0,"
        " sapo_temperature_neg=1.05, temperature=1.0, compiled=True, use_ref_model=True, chunk_size=1,"
        " vllm_is_ratio=None, delta=None, use_bias_correction_kl=False, vespo_k_pos=2.0,"
        " vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, num_items_in_batch=None)",
    ),
    (f"{CL}.grpo_loss", "LigerFusedLinearGRPOFunction", "backward", "(ctx, grad_output, *grad_metrics)"),
    (
        f"{CL}.grpo_loss",
        "LigerFusedLinearGRPOFunction",
        "ppo_loss_fn",
        "(per_token_logps, attention_mask, advantages, full_attention_mask, ref_per_token_logps=None,"
        " old_per_token_logps=None, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, loss_type='dapo',"
        " max_completion_length=None, importance_sampling_level='token', sapo_temperature_pos=1.0,"
        " sapo_temperature_neg=1.05, vllm_is_ratio=None, delta=None, use_bias_correction_kl=False,"
        " vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,"
        " num_items_in_batch=None, **kwargs)",
    ),
    (f"{CL}.functional", "liger_fused_linear_grpo", None, None),
    (
        f"{CL}.fused_linear_ppo",
        "LigerFusedLinearPPOBase",
        "forward",
        "(cls, ctx, _input, weight, selected_token_ids, attention_mask, advantages, bias=None,"
        " ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None,"
        " ref_bias=None, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, loss_type='dapo',"
        " max_completion_length=None, importance_sampling_level='token', temperature=1.0, compiled=True,"
        " use_ref_model=False, chunk_size=1, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,"
        " vllm_is_ratio=None, delta=None, use_bias_correction_kl=False, vespo_k_pos=2.0,"
        " vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, num_items_in_batch=None)",
    ),
    (
        f"{CL}.fused_linear_ppo",
        "LigerFusedLinearPPOBase",
        "_compute_dapo_normalizer",
        "(attention_mask, num_items_in_batch=None)",
    ),
    (
        f"{CL}.fused_linear_ppo",
        "LigerFusedLinearPPOBase",
        "_compute_loss_from_logps",
        "(per_token_logps, attention_mask_chunk, advantages_chunk, ref_per_token_logps_chunk=None,"
        " old_per_token_logps_chunk=None, vllm_is_ratio_chunk=None, full_attention_mask=None,"
        " epsilon_low=0.2, epsilon_high=0.2, beta=0.04, loss_type='dapo', max_completion_length=None,"
        " importance_sampling_level='token', ppo_loss_fn=None, sapo_temperature_pos=1.0,"
        " sapo_temperature_neg=1.05, delta=None, use_bias_correction_kl=False, vespo_k_pos=2.0,"
        " vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, num_items_in_batch=None)",
    ),
    (
        f"{CL}.fused_linear_ppo",
        "LigerFusedLinearPPOBase",
        "chunk_forward",
        "(input_chunk, weight, selected_token_ids, bias=None, temperature=1.0)",
    ),
    (f"{CL}.grpo_loss", "clip_coef_fn", None, "(coef, epsilon_low, epsilon_high, loss_type)"),
    (
        f"{CL}.grpo_loss",
        "get_gamma_weights",
        None,
        "(advantages, log_ratio_per_token, mask, importance_sampling_ratio=None, k_pos=2.0, lambda_pos=3.0,"
        " k_neg=3.0, lambda_neg=2.0)",
    ),
    (f"{CL}.grpo_loss", "k3_loss_fn", None, "(log_p, log_q)"),
    (f"{CL}.grpo_loss", "sapo_loss_fn", None, "(importance_ratio, temperature)"),
    (
        f"{T}.grpo_loss",
        "triton_grpo_loss",
        None,
        "(logits, old_logp, ref_logp, completion_ids, advantages, completion_mask=None, temperature=0.9,"
        " beta=0.04, eps_low=0.2, eps_high=0.4, inplace=True, loss_type='dapo', max_completion_length=None,"
        " importance_sampling_level='token', reduce=False, sapo_temperature_pos=1.0,"
        " sapo_temperature_neg=1.05, vllm_is_ratio=None, delta=None, use_bias_correction_kl=False,"
        " num_items_in_batch=None, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,"
        " vespo_lambda_neg=2.0)",
    ),
    (
        f"{OPS}.grpo_loss",
        "GrpoLossFunction",
        "forward",
        "(logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, temperature, beta,"
        " eps_low, eps_high, inplace, loss_type='grpo', max_completion_length=None, reduce=True,"
        " importance_sampling_level='token', sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,"
        " vllm_is_ratio=None, delta=None, use_bias_correction_kl=False, num_items_in_batch=None,"
        " phi_seq=None)",
    ),
    (f"{OPS}.grpo_loss", "fused_selective_log_softmax", None, None),
    # §1.5 / §5.1 chunked_loss: distillation
    *[
        entry
        for path, loss, function in (
            (f"{CL}.jsd_loss", "LigerFusedLinearJSDLoss", "LigerFusedLinearJSDFunction"),
            (
                f"{CL}.cosine_similarity_loss",
                "LigerFusedLinearCosineSimilarityLoss",
                "LigerFusedLinearCosineSimilarityFunction",
            ),
        )
        for entry in (
            *module_class(path, loss, DISTILL_INIT, DISTILL_MODULE_FORWARD),
            (CL, loss, None, None),
            (path, function, "forward", DISTILL_FUNCTION_FORWARD),
            (f"{CL}.functional", function, None, None),
        )
    ],
    (f"{CL}.jsd_loss", "LigerFusedLinearJSDFunction", "distillation_loss_fn", DISTILL_JSD_HOOK),
    (
        f"{CL}.cosine_similarity_loss",
        "LigerFusedLinearCosineSimilarityFunction",
        "distillation_loss_fn",
        DISTILL_COS_HOOK,
    ),
    (f"{CL}.functional", "liger_fused_linear_jsd", None, None),
    (f"{CL}.functional", "liger_fused_linear_cosine", None, None),
    (f"{CL}.fused_linear_distillation", "LigerFusedLinearDistillationBase", "forward", DISTILL_BASE_FORWARD),
    (f"{CL}.fused_linear_distillation", "LigerFusedLinearDistillationBase", "backward", "(ctx, grad_output, *args)"),
    (
        f"{CL}.fused_linear_distillation",
        "LigerFusedLinearDistillationBase",
        "distillation_loss_fn",
        "(student_logits, teacher_logits, target=None, ignore_index=None)",
    ),
    (f"{CL}.fused_linear_distillation", "LigerFusedLinearDistillationBase", "chunk_forward", DISTILL_CHUNK_FORWARD),
    (f"{CL}.fused_linear_distillation", "LigerFusedLinearDistillationBase", "_compute_loss", DISTILL_COMPUTE_LOSS),
    # §1.5 / §5.1 liger_kernel.chunked_loss: the preference losses
    *module_class(
        CL,
        "LigerFusedLinearDPOLoss",
        "(ignore_index=-100, beta=0.1, alpha=1.0, compute_nll_loss=False, compiled=True, use_ref_model=True,"
        " average_log_prob=False, chunk_size=1, loss_type='sigmoid', label_smoothing=0.0, discopop_tau=0.05)",
        "(lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None)",
    ),
    (
        f"{CL}.functional",
        "LigerFusedLinearDPOFunction",
        "forward",
        "(_input, weight, target, bias=None, ref_input=None, ref_weight=None, ref_bias=None, ignore_index=-100,"
        " beta=0.1, compute_nll_loss=False, compiled=True, use_ref_model=True, average_log_prob=False, chunk_size=1,"
        " loss_type='sigmoid', label_smoothing=0.0, discopop_tau=0.05, alpha=1.0)",
    ),
    (
        f"{CL}.dpo_loss",
        "LigerFusedLinearDPOFunction",
        "preference_loss_fn",
        "(chosen_logps, rejected_logps, full_target, ref_chosen_logps=None, ref_rejected_logps=None, beta=0.1,"
        " loss_type='sigmoid', label_smoothing=0.0, discopop_tau=0.05)",
    ),
    *module_class(
        CL,
        "LigerFusedLinearORPOLoss",
        "(ignore_index=-100, beta=0.1, compute_nll_loss=True, compiled=True, chunk_size=1)",
        "(lin_weight, _input, target, bias=None, nll_target=None)",
    ),
    (
        f"{CL}.orpo_loss",
        "LigerFusedLinearORPOFunction",
        "forward",
        "(_input, weight, target, bias=None, ignore_index=-100, beta=0.1, compute_nll_loss=True, nll_target=None,"
        " compiled=True, chunk_size=1)",
    ),
    (
        f"{CL}.orpo_loss",
        "LigerFusedLinearORPOFunction",
        "preference_loss_fn",
        "(chosen_logps, rejected_logps, full_target, beta=0.1)",
    ),
    *module_class(
        CL,
        "LigerFusedLinearCPOLoss",
        "(ignore_index=-100, beta=0.1, alpha=1.0, label_smoothing=0.0, compute_nll_loss=True, compiled=True,"
        " average_log_prob=False, chunk_size=1)",
        "(lin_weight, _input, target, bias=None)",
    ),
    (
        f"{CL}.cpo_loss",
        "LigerFusedLinearCPOFunction",
        "forward",
        "(_input, weight, target, bias=None, ignore_index=-100, beta=0.1, alpha=1.0, label_smoothing=0.0,"
        " compute_nll_loss=True, compiled=True, average_log_prob=False, chunk_size=1)",
    ),
    (
        f"{CL}.cpo_loss",
        "LigerFusedLinearCPOFunction",
        "preference_loss_fn",
        "(chosen_logps, rejected_logps, full_target, beta=0.1, label_smoothing=0.0)",
    ),
    *module_class(
        CL,
        "LigerFusedLinearSimPOLoss",
        "(ignore_index=-100, beta=0.1, alpha=1.0, label_smoothing=0.0, compute_nll_loss=True, compiled=True,"
        " gamma=0.5, chunk_size=1)",
        "(lin_weight, _input, target, bias=None)",
    ),
    (
        f"{CL}.simpo_loss",
        "LigerFusedLinearSimPOFunction",
        "forward",
        "(_input, weight, target, bias=None, ignore_index=-100, beta=0.1, alpha=1.0, label_smoothing=0.0,"
        " compute_nll_loss=False, compiled=True, gamma=0.5, chunk_size=1)",
    ),
    (
        f"{CL}.simpo_loss",
        "LigerFusedLinearSimPOFunction",
        "preference_loss_fn",
        "(chosen_logps, rejected_logps, full_target, beta=0.1, gamma=0.5, label_smoothing=0.0)",
    ),
    *module_class(
        CL,
        "LigerFusedLinearKTOLoss",
        "(ignore_index=-100, beta=0.1, compiled=True, use_ref_model=False, average_log_prob=False, chunk_size=1)",
        "(_input, lin_weight, target, bias=None, preference_labels=None, ref_input=None, ref_weight=None,"
        " ref_bias=None, kl=None)",
    ),
    (
        f"{CL}.kto_loss",
        "LigerFusedLinearKTOFunction",
        "forward",
        "(_input, weight, target, preference_labels, bias=None, ref_input=None, ref_weight=None, ref_bias=None,"
        " kl=None, ignore_index=-100, beta=0.1, compiled=True, use_ref_model=True, average_log_prob=False,"
        " chunk_size=1)",
    ),
    (
        f"{CL}.kto_loss",
        "LigerFusedLinearKTOFunction",
        "preference_loss_fn",
        "(log_prob_chunk, preference_labels_chunk, full_target, ref_log_prob_chunk=None, beta=0.1, kl=None)",
    ),
    *[(f"{CL}.functional", f"liger_fused_linear_{x}", None, None) for x in ("cpo", "dpo", "kto", "orpo", "simpo")],
    *[(f"{CL}.functional", f"LigerFusedLinear{x}Function", None, None) for x in ("CPO", "DPO", "KTO", "ORPO", "SimPO")],
    (
        f"{CL}.fused_linear_preference",
        "LigerFusedLinearPreferenceBase",
        "forward",
        "(cls, ctx, _input, weight, target, bias=None, chunk_size=1, ignore_index=-100, alpha=1.0, beta=0.1,"
        " compute_nll_loss=True, nll_target=None, compiled=True, use_ref_model=False, ref_input=None,"
        " ref_weight=None, ref_bias=None, average_log_prob=True, **loss_kwargs)",
    ),
    (f"{CL}.fused_linear_preference", "LigerFusedLinearPreferenceBase", "preference_loss_fn", "(*args, **kwargs)"),
    (
        f"{CL}.fused_linear_preference",
        "LigerFusedLinearPreferenceBase",
        "chunk_forward",
        "(input_chunk, weight, target_chunk, bias=None, ignore_index=-100, compute_nll_loss=True,"
        " chosen_nll_target_chunk=None, average_log_prob=True)",
    ),
    (
        f"{CL}.fused_linear_preference",
        "LigerFusedLinearPreferenceBase",
        "_compute_loss",
        "(input_chunk, weight, target_chunk, bias=None, preference_loss_fn=None, full_target=None,"
        " ignore_index=-100, alpha=1.0, beta=0.1, compute_nll_loss=True, use_ref_model=False, ref_input_chunk=None,"
        " ref_weight=None, ref_bias=None, full_nll_target=None, chosen_nll_target_chunk=None,"
        " average_log_prob=True, **loss_kwargs)",
    ),
    (
        f"{CL}.fused_linear_unpaired_preference",
        "LigerFusedLinearUnpairedPreferenceBase",
        "forward",
        "(cls, ctx, _input, weight, target, preference_labels, bias=None, chunk_size=1, ignore_index=-100,"
        " compiled=True, use_ref_model=False, ref_input=None, ref_weight=None, ref_bias=None,"
        " average_log_prob=False, **loss_kwargs)",
    ),
    (
        f"{CL}.fused_linear_unpaired_preference",
        "LigerFusedLinearUnpairedPreferenceBase",
        "chunk_forward",
        "(input_chunk, weight, target_chunk, preference_labels_chunk, bias=None, ignore_index=-100,"
        " average_log_prob=False)",
    ),
    (
        f"{CL}.fused_linear_unpaired_preference",
        "LigerFusedLinearUnpairedPreferenceBase",
        "_compute_loss",
        "(input_chunk, weight, target_chunk, preference_labels_chunk, bias=None, preference_loss_fn=None,"
        " full_target=None, ignore_index=-100, use_ref_model=False, ref_input_chunk=None, ref_weight=None,"
        " ref_bias=None, average_log_prob=False, **loss_kwargs)",
    ),
    # Issue 16: tensor parallel (§1.3, §1.6, §5.2)
    (T, "LigerVocabParallelCrossEntropy", None, None),
    *module_class(
        f"{T}.vocab_parallel_cross_entropy",
        "LigerVocabParallelCrossEntropy",
        "(ignore_index=-100, label_smoothing=0.0, reduction='none', label_smoothing_formula='pytorch',"
        " label_smoothing_mode='global')",
        "(vocab_parallel_logits, target, tp_group=None)",
    ),
    (
        f"{OPS}.vocab_parallel_cross_entropy",
        "LigerVocabParallelCEFunction",
        "forward",
        "accepts:(vocab_parallel_logits, target, tp_group, ignore_index, label_smoothing, label_smoothing_formula,"
        " label_smoothing_mode)",
    ),
    (
        f"{T}.functional",
        "liger_fused_linear_scaled_cross_entropy_tp",
        None,
        "accepts:(input, weight, target, tp_group, temperature=1.0, ignore_index=-100, tiles_per_reduce=1,"
        " return_entropy=False)",
    ),
    # Issue 13: the kernels of the new families (§1.2, §1.3, §1.6, §5.2)
    *[
        (path, name, None, spec)
        for path in (T, f"{T}.qwen2vl_mrope")
        for name, spec in [("liger_multimodal_rotary_pos_emb", MROPE)]
    ],
    *[
        (path, name, None, spec)
        for path in (T, f"{T}.llama4_rope")
        for name, spec in [
            ("liger_llama4_text_rotary_pos_emb", "(xq, xk, freqs_cis)"),
            ("liger_llama4_vision_rotary_pos_emb", "(query, key, freqs_ci)"),
        ]
    ],
    (f"{T}.llama4_rope", "apply_liger_llama4_rope_full", None, "(modeling_module)"),
    (f"{T}.functional", "liger_qwen2vl_mrope", None, MROPE),
    *[
        entry
        for path in (T, f"{T}.fused_add_rms_norm")
        for entry in module_class(
            path,
            "LigerFusedAddRMSNorm",
            "(hidden_size, eps=1e-06, offset=0.0, casting_mode='llama', init_fn='ones', in_place=False)",
            "(hidden_states, residual)",
        )
    ],
    *[
        entry
        for path in (T, f"{T}.tiled_mlp")
        for name in ("LigerTiledSwiGLUMLP", "LigerTiledGEGLUMLP")
        for entry in module_class(path, name, "(config, num_shards=None)", "(x)")
    ],
    *[
        entry
        for path in (T, f"{T}.rms_norm")
        for name, init in [
            (
                "LigerRMSNormForMuseGlimmer",
                "(dim=None, eps=1e-06, offset=0.0, casting_mode='gemma', init_fn='ones', in_place=False,"
                " with_scale=True)",
            ),
            (
                "LigerRMSNormForMuseGlimmerTextCentered",
                "(hidden_size, eps=1e-06, offset=1.0, casting_mode='gemma', init_fn='zeros', in_place=False,"
                " row_mode=None)",
            ),
        ]
        for entry in module_class(path, name, init, "(hidden_states)")
    ],
    *[
        entry
        for path in (T, f"{T}.swiglu")
        for entry in module_class(path, "LigerSwiGLUMLPForMuseGlimmer", "(config)", "(x)")
    ],
    (
        f"{T}.functional",
        "liger_fused_add_rms_norm",
        None,
        "(X, R, W, eps, offset=0.0, casting_mode='llama', in_place=True)",
    ),
    *[
        (path, name, member, spec)
        for module, name, member, spec in [
            ("qwen2vl_mrope", "LigerQwen2VLMRopeFunction", "forward", MROPE),
            ("qwen2vl_mrope", "qwen2vl_mrope_forward", None, MROPE),
            ("qwen2vl_mrope", "qwen2vl_mrope_backward", None, "(dq, dk, cos, sin, mrope_section, unsqueeze_dim=1)"),
            ("llama4_rope", "LigerLlama4RopeFunction", "forward", "(q, k, freqs_cis, BLOCK_SIZE=None)"),
            ("llama4_rope", "llama4_rope_forward", None, "(q, k, freqs_cis, BLOCK_SIZE=None)"),
            (
                "fused_add_rms_norm",
                "LigerFusedAddRMSNormFunction",
                "forward",
                "(X, R, W, eps, offset=0.0, casting_mode='llama', in_place=False)",
            ),
            ("fused_add_rms_norm", "fused_add_rms_norm_forward", None, "(X, R, W, eps, offset, casting_mode)"),
            ("tiled_mlp", "LigerTiledMLPFunction", "forward", "(fn, mlp_module, x, shards, compute_params=None)"),
            ("tiled_mlp", "apply_tiled_mlp", None, "(fn, mlp_module, x, num_shards=None, compute_params=None)"),
            (
                "fused_add_rms_norm",
                "fused_add_rms_norm_backward",
                None,
                "(dY, dS_out, S, W, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, num_stages, in_place,"
                " needs_dw=None)",
            ),
        ]
        for path in (OPS, f"{OPS}.{module}")
    ],
    # Mixture of experts: the families' apply functions and their forward modules
    *[(T, f"apply_liger_kernel_to_{family}", None, spec) for family, spec in MOE_FAMILIES.items()],
    *[
        (
            f"{T}.model.{module}",
            "lce_forward",
            None,
            LCE_FORWARD if module in ("deepseek_v2", "deepseek_v3") else LCE_FORWARD_MOE,
        )
        for module in MOE_FORWARDS
    ],
]

# Names of §1.1-§1.10 that later issues bring, with the reason: the boundary of this test.
EXCLUDED = {
    f"{T}.model.qwen3_5_moe.lce_forward_conditional_generation, {T}.model.glm4v_moe.lce_forward,"
    f" {T}.model.qwen3_vl_moe.lce_forward": "the multimodal forwards: issue 14, the vlm branch",
    f"{T}.trainer.LigerORPOTrainer (§1.9)": "needs the chunked ORPO loss; trl 1.16 has no trl.trainer.ORPOTrainer",
    f"{T}: LigerDyT, LigerModulatedRMSNorm, LigerPolyNorm, LigerSoftmax,"
    " LigerSparsemax, LigerMultiTokenAttention, LigerMHC": "ops not built yet",
    f"{T}.apply_liger_kernel_to_* for the families not in the table yet": "new model families: later issues",
    f"{T}.functional: liger_dyt, liger_modulated_rms_norm, liger_poly_norm, liger_group_norm,"
    " liger_softmax, liger_sparsemax, liger_multi_token_attention,"
    " liger_fused_neighborhood_attention, liger_attn_res, liger_mhc_*": "ops not built yet",
    f"{OPS}: the other names of §1.6 (DyT, group/poly/modulated norms, softmax, sparsemax,"
    " attention, MHC, the fully fused MLP (LigerMLPFunction))": "ops not built yet",
    f"{OPS}.backends._triton/_cutile/_cutedsl/_ascend, {OPS}.cutile, {OPS}.cutedsl, {OPS}.cute, {OPS}.configure": (
        "alternative kernel implementations (cuTile, CuTe DSL, Ascend): the registry lists what exists"
    ),
    f"{T}.model.<family> for the families not in the table yet, gemma3.multimodal_forward,"
    " output classes of multimodal families": "new model families: later issues",
}


def _parse(spec: str) -> inspect.Signature:
    """An ``inspect.Signature`` from the peer's notation ``(a, b=1, *args, c=None, **kwargs)``."""
    args = ast.parse(f"def f{spec}: pass").body[0].args
    P = inspect.Parameter
    positional = args.posonlyargs + args.args
    defaults = [P.empty] * (len(positional) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    params = [P(a.arg, P.POSITIONAL_OR_KEYWORD, default=d) for a, d in zip(positional, defaults)]
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params.append(P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else ast.literal_eval(d)))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def _signature(obj, member):
    if member == "__init__":
        return inspect.signature(obj)
    target = obj if member is None else getattr(obj, member)
    if type(target).__module__.startswith("triton."):  # a @triton.jit kernel (or its interpreted form)
        target = target.fn
    signature = inspect.signature(target)
    params = list(signature.parameters.values())
    if member in ("forward", "__call__") and params and params[0].name in ("self", "ctx"):
        signature = signature.replace(parameters=params[1:])
    return signature


def _mismatches(ours: inspect.Signature, peer: inspect.Signature) -> list[str]:
    P = inspect.Parameter
    kinds = lambda sig, *ks: [p for p in sig.parameters.values() if p.kind in ks]  # noqa: E731
    ours_pos = kinds(ours, P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    peer_pos = kinds(peer, P.POSITIONAL_OR_KEYWORD)
    problems = []
    if [p.name for p in ours_pos[: len(peer_pos)]] != [p.name for p in peer_pos]:
        problems.append(f"positional parameters {[p.name for p in ours_pos]} do not start with the peer's")
    by_name = ours.parameters
    for p in peer.parameters.values():
        if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if not kinds(ours, p.kind):
                problems.append(f"no {'*args' if p.kind is P.VAR_POSITIONAL else '**kwargs'}")
            continue
        mine = by_name.get(p.name)
        if mine is None or mine.kind in (P.POSITIONAL_ONLY, P.VAR_POSITIONAL, P.VAR_KEYWORD):
            problems.append(f"`{p.name}` is not a parameter")
        elif p.default is not P.empty and not (mine.default == p.default and type(mine.default) is type(p.default)):
            problems.append(f"`{p.name}` defaults to {mine.default!r}, the peer's to {p.default!r}")
    peer_names = set(peer.parameters)
    for p in ours_pos[len(peer_pos) :]:
        if p.name not in peer_names and p.default is P.empty:
            problems.append(f"added parameter `{p.name}` has no default")
    for p in kinds(ours, P.KEYWORD_ONLY):
        if p.name not in peer_names and p.default is P.empty:
            problems.append(f"added keyword `{p.name}` has no default")
    return problems


def _accepts(ours: inspect.Signature, peer: inspect.Signature) -> list[str]:
    P = inspect.Parameter
    takes_kwargs = any(p.kind is P.VAR_KEYWORD for p in ours.parameters.values())
    named = {n for n, p in ours.parameters.items() if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    return [
        f"`{p.name}` is not accepted by keyword"
        for p in peer.parameters.values()
        if p.kind is P.POSITIONAL_OR_KEYWORD and p.name not in named and not takes_kwargs
    ]


def _id(entry):
    path, name, member, _ = entry
    return f"{path}.{name}" + (f".{member}" if member else "")


@pytest.mark.parametrize("entry", NAMES, ids=[_id(e) for e in NAMES])
def test_name(entry):
    path, name, member, spec = entry
    module = importlib.import_module(path)
    assert hasattr(module, name), f"`from {path} import {name}` fails"
    obj = getattr(module, name)
    if member is not None:
        assert hasattr(obj, member), f"{path}.{name} has no `{member}`"
    if spec is None:
        return
    ours = _signature(obj, member)
    if spec.startswith("accepts:"):
        problems = _accepts(ours, _parse(spec.removeprefix("accepts:")))
    else:
        problems = _mismatches(ours, _parse(spec))
    assert not problems, f"{_id(entry)}{ours} vs the peer's {spec}: " + "; ".join(problems)


def test_names_are_listed_once():
    ids = [_id(e) for e in NAMES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_every_family_is_covered():
    from liger_kernel.transformers.model_specs import MODEL_SPECS

    assert set(MODEL_SPECS) == set(FAMILIES) | set(DENSE_FAMILIES) | set(MOE_FAMILIES) | set(VISION_LANGUAGE_FAMILIES)


# ----------------------------------------------------------------------------- the helpers work as callers use them


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "strided-columns"])
def test_element_mul_kernel(dtype, transposed):
    """Each row scaled in place by the scalar upstream gradient; 37 columns in blocks of 16 (a loop
    and a masked tail), untouched memory around the rows stays untouched."""
    from liger_kernel.ops.utils import element_mul_kernel

    torch.manual_seed(0)
    base = randn(37, 5, dtype=dtype) if transposed else randn(5, 40, dtype=dtype)
    x = base.t() if transposed else base[:, :37]
    before = base.clone()
    grad_output = torch.tensor(0.37, device=DEVICE)
    expected = x.double() * grad_output.double()
    element_mul_kernel[(x.shape[0],)](x, x.stride(0), grad_output, 37, BLOCK_SIZE=16, X_col_stride=x.stride(1))
    assert_matches("x", x, expected, baseline=expected.to(dtype))
    if not transposed:
        assert torch.equal(base[:, 37:], before[:, 37:])


def test_utils_helpers():
    from liger_kernel import utils
    from liger_kernel.ops import utils as ops_utils

    device = utils.infer_device()
    assert utils.infer_comm_backend() == {"cuda": "nccl", "xpu": "xccl", "npu": "hccl", "cpu": "gloo"}[device]
    arch = utils.infer_device_arch()
    assert arch.startswith(("sm_", "gfx")) if device == "cuda" else arch
    assert utils.get_total_gpu_memory() == (
        torch.cuda.get_device_properties(0).total_memory >> 30 if device == "cuda" else 0
    )
    assert utils.is_peft_available() is utils.PEFT_AVAILABLE
    calls = []
    result = utils.transformers_version_dispatch(
        "4.0.0",
        lambda *a, **k: calls.append(("before", a, k)),
        lambda *a, **k: calls.append(("after", a, k)) or "after",
        before_args=(1,),
        after_args=(2,),
        after_kwargs={"x": 3},
    )
    assert result == "after" and calls == [("after", (2,), {"x": 3})]
    assert utils.transformers_version_dispatch("999.0", lambda: "before", lambda: "after") == "before"
    fwd, bwd = ops_utils.get_amp_custom_fwd_bwd()
    assert fwd.keywords == bwd.keywords == {"device_type": device}
    with ops_utils.device_context(torch.device(DEVICE)):
        assert torch.ones(1, device=DEVICE).device.type == DEVICE
    assert ops_utils.is_hip() == (torch.version.hip is not None)
    assert device == "npu" or ops_utils.get_npu_core_count(7) == 7
    kernel_args = {}
    ops_utils.set_large_grf_mode(kernel_args)
    assert kernel_args == ({"grf_mode": "large"} if device == "xpu" else {})


def test_amp_custom_fwd_runs_forward_in_the_callers_autocast():
    from liger_kernel.ops.utils import amp_custom_bwd, amp_custom_fwd

    class Double(torch.autograd.Function):
        @staticmethod
        @amp_custom_fwd
        def forward(ctx, x):
            return x * 2

        @staticmethod
        @amp_custom_bwd
        def backward(ctx, grad):
            return grad * 2

    x = randn(3, requires_grad=True)
    Double.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
