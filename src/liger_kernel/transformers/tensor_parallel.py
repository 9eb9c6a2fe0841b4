"""Tensor parallelism at the boundary where a module hands tensors to a kernel.

- Norms (``LigerRMSNorm``, ``LigerLayerNorm``) on DTensors: a norm needs whole rows, so the kernel
  runs on local tensors wherever the normalized (last) dim is whole on every rank: inputs
  replicated or sharded along token dims (sequence parallel). A sharded weight is gathered first
  (H values). A normalized dim sharded across ranks, or a partial input, is an error naming the fix.
- ``liger_fused_linear_scaled_cross_entropy_tp``: the fused linear cross-entropy of a column-sharded
  (vocabulary-parallel) ``lm_head`` (ops/fused_linear_cross_entropy_tp.py).
"""

from liger_kernel.ops.cross_entropy import CEOptions
from liger_kernel.ops.fused_linear_cross_entropy_tp import LigerFusedLinearScaledCrossEntropyTPFunction
from liger_kernel.transformers.cross_entropy import CrossEntropyOutput


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (imports nothing when none can exist)."""
    import sys

    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def norm_on_local_tensors(apply, hidden_states, params, *args):
    """``apply(hidden_states, *params, *args)`` (a norm's autograd Function) on DTensors: run on the
    local tensors and wrap the output with the input's placements.

    On each mesh dim, ``hidden_states`` may be replicated or sharded along a token dim; the weight's
    gradient is then a partial sum there (each rank saw its own tokens), as PyTorch's own norms
    give it. Sharded weights are gathered first, and their gradient goes back sharded."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    if not is_dtensor(hidden_states):
        raise ValueError(
            "`hidden_states` is a plain tensor but the norm's weight is a DTensor: pass a DTensor input "
            "(e.g. with a SequenceParallel plan on the norm), or leave the norm's parameters plain."
        )
    mesh, placements, last = hidden_states.device_mesh, hidden_states.placements, hidden_states.ndim - 1
    for placement in placements:
        if placement.is_partial():
            raise ValueError(
                "`hidden_states` is a partial DTensor: reduce it (redistribute to Replicate) before the norm."
            )
        if placement.is_shard() and placement.dim % hidden_states.ndim == last:
            raise ValueError(
                "`hidden_states` is sharded along the normalized (last) dim, and a norm needs whole rows: "
                "redistribute it to Replicate, or Shard a token dim, before the norm."
            )
    grad_placements = [Partial() if p.is_shard() else Replicate() for p in placements]
    local_params = []
    for param in params:
        if param is not None:
            if not is_dtensor(param) or param.device_mesh != mesh:
                raise ValueError("The norm's weight and bias must be DTensors on `hidden_states`' device mesh.")
            param = param.redistribute(mesh, [Replicate()] * mesh.ndim).to_local(grad_placements=grad_placements)
        local_params.append(param)
    out = apply(hidden_states.to_local(), *local_params, *args)
    return DTensor.from_local(
        out, mesh, placements, run_check=False, shape=hidden_states.shape, stride=hidden_states.stride()
    )


def sharded_head(weight, bias, tp_group):
    """``(weight, bias, tp_group)`` as local tensors: a DTensor head must be ``Shard(0)`` (column
    parallel) on a 1-D mesh, whose group is then the default."""
    if not is_dtensor(weight):
        return weight, bias, tp_group
    from torch.distributed.tensor import Shard

    if weight.device_mesh.ndim != 1 or weight.placements != (Shard(0),):
        raise ValueError(
            f"`weight` must be sharded along the vocabulary (Shard(0)) on a 1-D mesh, got {weight.placements}."
        )
    if tp_group is None:
        tp_group = weight.device_mesh.get_group()
    return weight.to_local(), bias.to_local() if is_dtensor(bias) else bias, tp_group


def liger_fused_linear_scaled_cross_entropy_tp(
    input,
    weight,
    target,
    tp_group,
    temperature=1.0,
    ignore_index=-100,
    tiles_per_reduce=1,
    return_entropy=False,
    *,
    bias=None,
    ce_weight=None,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="none",
    softcap=None,
    return_z_loss=False,
    use_token_scaling=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
):
    """Cross-entropy of ``input [..., H] @ weight.T / temperature`` against ``target [...]`` where
    ``weight`` (and ``bias``) are this rank's rows ``[V_r, H]`` of a vocabulary-sharded head (slices
    in rank order over ``tp_group``; None: the default group, or a ``Shard(0)`` DTensor's own) and
    ``input`` is the same on every rank. Equals the single-GPU ``liger_fused_linear_cross_entropy``
    on the whole head, with the same options (``ce_weight`` covers the whole vocabulary [V]); the
    default reduction is "none" (per-token losses, as temperature-scaled log-probabilities are used).
    ``input``'s gradient comes back whole on every rank. ``tiles_per_reduce`` is accepted for the
    peer's signature and changes nothing. Returns the loss, or a ``CrossEntropyOutput`` when z-loss,
    accuracy or predictions are asked; with ``return_entropy``, ``(that, entropy per token)``."""
    weight, bias, tp_group = sharded_head(weight, bias, tp_group)
    opts = CEOptions(
        ignore_index=ignore_index,
        lse_square_scale=lse_square_scale,
        label_smoothing=label_smoothing,
        reduction=reduction,
        softcap=softcap,
        return_z_loss=return_z_loss,
        return_token_accuracy=return_token_accuracy,
        return_predicted_tokens=return_predicted_tokens,
        use_token_scaling=use_token_scaling,
    )
    loss, z_loss, accuracy, predicted, entropy = LigerFusedLinearScaledCrossEntropyTPFunction.apply(
        input,
        weight,
        target,
        tp_group,
        temperature,
        ignore_index,
        tiles_per_reduce,
        return_entropy,
        bias,
        ce_weight,
        opts,
    )
    result = loss
    if return_z_loss or return_token_accuracy or return_predicted_tokens:
        result = CrossEntropyOutput(loss, z_loss, accuracy, predicted)
    return (result, entropy) if return_entropy else result
