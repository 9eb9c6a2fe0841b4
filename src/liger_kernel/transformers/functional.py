"""``liger_*`` functions: thin, argument-checked entries to the ops' autograd Functions."""

import torch

from liger_kernel.ops import (
    library_jsd,  # noqa: F401  (registers the JSD ops that apply_of routes to)
    library_losses,  # noqa: F401  (registers the loss ops that apply_of routes to)
)
from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction
from liger_kernel.ops.fused_linear_kl_div import LigerFusedLinearKLDivFunction
from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.jsd import LigerJSDFunction
from liger_kernel.ops.kl_div import LigerKLDivLossFunction
from liger_kernel.ops.layer_norm import LigerLayerNormFunction
from liger_kernel.ops.library import apply_of
from liger_kernel.ops.qwen2vl_mrope import LigerQwen2VLMRopeFunction
from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from liger_kernel.ops.rope import LigerRopeFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction
from liger_kernel.ops.tvd import LigerTVDLossFunction
from liger_kernel.transformers.cross_entropy import CrossEntropyOutput as CrossEntropyOutput  # the peer's path
from liger_kernel.transformers.cross_entropy import pack_outputs
from liger_kernel.transformers.tensor_parallel import (  # noqa: F401  the peer's functional
    liger_fused_linear_scaled_cross_entropy_tp as liger_fused_linear_scaled_cross_entropy_tp,
)


def liger_swiglu(a, b):
    """``silu(a) * b`` for tensors of one shape."""
    return apply_of(LigerSiLUMulFunction, "silu_mul")(a, b)


def liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] in HF's rotate_half layout; ``(q_embed, k_embed)``."""
    return apply_of(LigerRopeFunction, "rope")(q, k, cos, sin, position_ids, unsqueeze_dim, rotary_dim)


def liger_geglu(a, b):
    """``gelu_tanh(a) * b`` for tensors of one shape."""
    return apply_of(LigerGELUMulFunction, "gelu_mul")(a, b)


def liger_relu_squared(x):
    """``relu(x) ** 2`` elementwise (Nemotron's MLP activation)."""
    return apply_of(LigerReLUSquaredFunction, "relu_squared")(x)


def liger_rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True):
    """RMSNorm of X [..., H] with weight W [H] (or None); ``casting_mode`` "llama", "gemma" or "none".
    The backward never writes into the incoming gradient here, whatever ``in_place`` says: a
    caller sure that nothing else reads it passes ``grad_output_unshared=True`` to
    ``LigerRMSNormFunction`` / ``LigerRMSNorm`` instead."""
    return apply_of(LigerRMSNormFunction, "rms_norm")(X, W, eps, offset, casting_mode, in_place)


def liger_layer_norm(X, W, B, eps):
    """LayerNorm of X [..., H] with weight W [H] and bias B [H] (or None)."""
    return apply_of(LigerLayerNormFunction, "layer_norm")(X, W, B, eps)


def liger_cross_entropy(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    lse_square_scale=0.0,
    softcap=None,
    return_z_loss=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """``F.cross_entropy`` of logits [BT, V] and labels [BT] plus z-loss, softcap and token accuracy.
    Returns the loss in the logits' dtype (computed in fp32), or a ``CrossEntropyOutput`` when an
    extra output is requested; an all-ignored or empty batch gives 0 where PyTorch gives NaN. The
    backward writes the gradient over the logits unless a leaf owns them (see
    ``LigerCrossEntropyFunction``)."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    outputs = apply_of(LigerCrossEntropyFunction, "cross_entropy")(
        input,
        target,
        weight,
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        return_token_accuracy,
        return_predicted_tokens,
    )
    return pack_outputs(outputs, return_z_loss, return_token_accuracy, return_predicted_tokens)


def liger_fused_linear_cross_entropy(
    input,
    weight,
    target,
    bias=None,
    ce_weight=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    accum_dtype=None,
    use_token_scaling=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
    chunk_mem_const=1,
    *,
    loss_dtype=None,
):
    """Cross-entropy of ``input [BT, H] @ weight[V, H].T + bias`` against ``target [BT]`` without the
    logits tensor. Returns the loss, or a ``CrossEntropyOutput`` when an extra output is requested.
    By default every gradient is exact (rounded once from fp32); any ``accum_dtype`` selects the
    faster token-chunk path that accumulates the weight gradient in it (``torch.bfloat16``: Liger
    Kernel 0.8.5's default). ``chunk_mem_const`` multiplies the chunk memory budgets.
    ``loss_dtype``: the dtype of the returned losses (default: the input's, as
    ``F.cross_entropy(F.linear(...))``), computed in fp32 and cast once (the patched models ask for
    ``torch.float32``, the loss Hugging Face's upcast logits give). See
    ``LigerFusedLinearCrossEntropyFunction``."""
    outputs = apply_of(LigerFusedLinearCrossEntropyFunction, "fused_linear_cross_entropy")(
        input,
        weight,
        target,
        bias,
        ce_weight,
        ignore_index,
        lse_square_scale,
        label_smoothing,
        reduction,
        softcap,
        return_z_loss,
        accum_dtype,
        use_token_scaling,
        return_token_accuracy,
        return_predicted_tokens,
        None,
        None,
        chunk_mem_const,
        loss_dtype,
    )
    return pack_outputs(outputs, return_z_loss, return_token_accuracy, return_predicted_tokens)


def liger_kl_div(input, target, size_average=True, reduce=True, reduction="mean", log_target=False, eps=1e-10):
    """``F.kl_div(input, target, reduction=reduction, log_target=log_target)`` (``input``
    log-probabilities; ``eps`` bounds the log of a probability target). The legacy
    ``size_average`` / ``reduce`` decide the reduction only when one of them is False, as
    PyTorch's would (their defaults here are True, which leaves ``reduction`` in charge)."""
    if size_average is False or reduce is False:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    return apply_of(LigerKLDivLossFunction, "kl_div")(input, target, reduction, log_target, eps)


def liger_jsd(input, target, shift_labels=None, beta=0.5, ignore_index=-100):
    """Generalized JSD of the student's log-probabilities ``input`` and the teacher's ``target``
    [BT, V], over the rows whose ``shift_labels`` is not ``ignore_index`` (see ``LigerJSD``)."""
    return apply_of(LigerJSDFunction, "jsd")(input, target, shift_labels, beta, ignore_index)


def liger_tvd(input, target, shift_labels=None, reduction="mean", ignore_index=-100):
    """Total variation distance of the probabilities ``input`` and ``target`` [BT, V] (see ``LigerTVDLoss``)."""
    return apply_of(LigerTVDLossFunction, "tvd")(input, target, shift_labels, reduction, ignore_index)


def liger_fused_linear_jsd(
    student_input,
    student_weight,
    teacher_input,
    teacher_weight,
    shift_labels=None,
    jsd_beta=0.5,
    ignore_index=-100,
    temperature=1.0,
    accum_dtype=None,
):
    """The JSD of a student's and a teacher's head outputs without their logits (see ``LigerFusedLinearJSD``)."""
    return apply_of(LigerFusedLinearJSDFunction, "fused_linear_jsd")(
        student_input, student_weight, teacher_input, teacher_weight, shift_labels, jsd_beta, ignore_index,
        temperature, accum_dtype,
    )  # fmt: skip


def liger_fused_linear_kl_div(
    student_input,
    student_weight,
    target,
    shift_labels=None,
    reduction="batchmean",
    ignore_index=-100,
    temperature=1.0,
    eps=1e-10,
    accum_dtype=None,
):
    """KL of a student head's output against teacher probabilities without the student's logits
    (see ``LigerFusedLinearKLDivLoss``)."""
    return apply_of(LigerFusedLinearKLDivFunction, "fused_linear_kl_div")(
        student_input, student_weight, target, shift_labels, reduction, ignore_index, temperature, eps, accum_dtype
    )


def liger_qwen2vl_mrope(q, k, cos, sin, mrope_section, unsqueeze_dim=1):
    """Qwen2-VL's multimodal RoPE of q and k, cos/sin [3, B, T, D]; ``(q_embed, k_embed)``."""
    return apply_of(LigerQwen2VLMRopeFunction, "qwen2vl_mrope")(q, k, cos, sin, mrope_section, unsqueeze_dim)


def liger_fused_add_rms_norm(X, R, W, eps, offset=0.0, casting_mode="llama", in_place=True):
    """``(Y, S)``: ``S = X + R`` and its RMSNorm ``Y`` in one pass (see ``LigerFusedAddRMSNormFunction``).
    ``in_place`` reuses a gradient buffer only where the caller also vouches, as in ``liger_rms_norm``."""
    return apply_of(LigerFusedAddRMSNormFunction, "fused_add_rms_norm")(X, R, W, eps, offset, casting_mode, in_place)
