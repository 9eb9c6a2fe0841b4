"""``liger_*`` functions: thin, argument-checked entries to the ops' autograd Functions."""

import torch

from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
from liger_kernel.ops.geglu import LigerGELUMulFunction
from liger_kernel.ops.layer_norm import LigerLayerNormFunction
from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from liger_kernel.ops.rope import LigerRopeFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction
from liger_kernel.transformers.cross_entropy import CrossEntropyOutput as CrossEntropyOutput  # the peer's path
from liger_kernel.transformers.cross_entropy import pack_outputs


def liger_swiglu(a, b):
    """``silu(a) * b`` for tensors of one shape."""
    return LigerSiLUMulFunction.apply(a, b)


def liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] in HF's rotate_half layout; ``(q_embed, k_embed)``."""
    return LigerRopeFunction.apply(q, k, cos, sin, position_ids, unsqueeze_dim, rotary_dim)


def liger_geglu(a, b):
    """``gelu_tanh(a) * b`` for tensors of one shape."""
    return LigerGELUMulFunction.apply(a, b)


def liger_relu_squared(x):
    """``relu(x) ** 2`` elementwise (Nemotron's MLP activation)."""
    return LigerReLUSquaredFunction.apply(x)


def liger_rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True):
    """RMSNorm of X [..., H] with weight W [H] (or None); ``casting_mode`` "llama", "gemma" or "none".
    The backward never writes into the incoming gradient here, whatever ``in_place`` says: a
    caller sure that nothing else reads it passes ``grad_output_unshared=True`` to
    ``LigerRMSNormFunction`` / ``LigerRMSNorm`` instead."""
    return LigerRMSNormFunction.apply(X, W, eps, offset, casting_mode, in_place)


def liger_layer_norm(X, W, B, eps):
    """LayerNorm of X [..., H] with weight W [H] and bias B [H] (or None)."""
    return LigerLayerNormFunction.apply(X, W, B, eps)


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
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    outputs = LigerCrossEntropyFunction.apply(
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
    outputs = LigerFusedLinearCrossEntropyFunction.apply(
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
