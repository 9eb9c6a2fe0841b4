"""More layer ops as ``torch.library`` custom ops, as ``ops/library.py`` registers the first ones
(see there: fake implementations, autograd formulas, twins that ``apply_of`` routes to while
Dynamo traces, the eager path untouched): Qwen2-VL's M-RoPE, Llama 4's RoPE, the fused residual
add and RMSNorm, the fused MoE experts and the tiled gated MLP (the generic tiled MLP, around any
module's forward, stays one graph break: it runs autograd inside its backward).

The two RoPE variants are one op each, forward and backward alike: the backward of a rotation is
the inverse rotation, so ``inverse`` flips and the op's own autograd formula serves both ways.

The MoE experts' backward kernels write dgu over the pre-activation ``gu``; the op hands them a copy,
so that ``gu``, an output of the forward op, is never changed behind its caller (AOT autograd
cannot partition a backward that mutates a forward output the caller holds). Under compile the
backward so holds one more [pairs, 2I] buffer than the eager Function's.
"""

import torch
from torch import Tensor

from liger_kernel.ops.fused_add_rms_norm import (
    _check_residual,
    fused_add_rms_norm_backward,
    fused_add_rms_norm_forward,
    fused_add_rms_norm_reference,
)
from liger_kernel.ops.fused_moe import (
    BLOCK_M,
    _check_inputs,
    _dims,
    fused_moe_backward,
    fused_moe_forward,
    fused_moe_reference,
)
from liger_kernel.ops.library import (
    _TWINS,
    ENABLED,
    _custom_op,
    _empty,
    _kernels,
    _or_zeros,
    _reference_grads,
    _rope_strides,
    _stats,
)
from liger_kernel.ops.llama4_rope import _cos_sin_pairs, llama4_rope_reference
from liger_kernel.ops.norms import check_norm_inputs
from liger_kernel.ops.qwen2vl_mrope import _check_shapes, qwen2vl_mrope_reference
from liger_kernel.ops.rms_norm import casting_mode_name, rms_norm_reference
from liger_kernel.ops.rope import _layout_order, check_rope_tensors, rope_launch
from liger_kernel.ops.swiglu import gated_mlp_reference
from liger_kernel.ops.tiled_mlp import check_tiled_gated, tiled_gated_backward, tiled_gated_forward
from liger_kernel.ops.utils import cdiv

# ----------------------------------------------------------------------------- M-RoPE and Llama 4 RoPE


def _rotate(q, k, cos, sin, unsqueeze_dim, inverse, orders, reference, **variant):
    """The rotation (or its inverse) of q and k, each output dense in its input's memory order
    (``orders`` empty) or the given ones; ``reference(q, k)`` (the same way round) on the
    reference path."""
    orders = (tuple(orders[0]), tuple(orders[1])) if orders[0] else None
    if _kernels(q):
        qo, ko, _ = rope_launch(q, k, cos, sin, unsqueeze_dim, None, inverse, orders, **variant)
        return qo, ko
    results = reference(q, k)
    return tuple(
        x.new_empty_strided(x.shape, _rope_strides(x, order)).copy_(r)
        for x, r, order in zip((q, k), results, orders or (None, None))
    )


def _rotate_fake(q, k, q_order, k_order):
    return tuple(x.new_empty_strided(x.shape, _rope_strides(x, o or None)) for x, o in ((q, q_order), (k, k_order)))


def _orders(q, k) -> tuple:
    return tuple(list(_layout_order(x.shape, x.stride())) for x in (q, k))


@_custom_op("qwen2vl_mrope")
def qwen2vl_mrope(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, mrope_section: list[int], unsqueeze_dim: int, inverse: bool,
    q_order: list[int], k_order: list[int],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """M-RoPE of q and k (``inverse``: its inverse, the backward), dense in the memory orders of
    q and k (``q_order`` / ``k_order`` empty) or the given ones."""

    def rotation(q, k):
        return qwen2vl_mrope_reference(q, k, cos, sin, mrope_section, unsqueeze_dim)

    def reference(q, k):  # the inverse: the rotation's gradient (the rotation is linear)
        return _reference_grads(rotation, (q, k), (q, k)) if inverse else rotation(q, k)

    sections = tuple(mrope_section)
    return _rotate(q, k, cos, sin, unsqueeze_dim, inverse, (q_order, k_order), reference, mrope_section=sections)


@qwen2vl_mrope.register_fake
def _(q, k, cos, sin, mrope_section, unsqueeze_dim, inverse, q_order, k_order):
    return _rotate_fake(q, k, q_order, k_order)


def _mrope_setup(ctx, inputs, output):
    q, k, cos, sin, *settings, inverse, _, _ = inputs
    ctx.save_for_backward(cos, sin)
    ctx.settings, ctx.inverse, ctx.orders = settings, inverse, _orders(q, k)


def _mrope_backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = qwen2vl_mrope(_or_zeros(dq, cos), _or_zeros(dk, cos), cos, sin, *ctx.settings, not ctx.inverse,
                           *ctx.orders)  # fmt: skip
    return dq, dk, *([None] * 7)


qwen2vl_mrope.register_autograd(_mrope_backward, setup_context=_mrope_setup)


def _qwen2vl_mrope_twin(q, k, cos, sin, mrope_section, unsqueeze_dim=1):
    check_rope_tensors(q, k, cos, sin)
    sections = list(_check_shapes(q, k, cos, sin, mrope_section, unsqueeze_dim))
    return qwen2vl_mrope(q, k, cos.detach(), sin.detach(), sections, unsqueeze_dim, False, [], [])


@_custom_op("llama4_rope")
def llama4_rope(
    q: Tensor, k: Tensor, freqs: Tensor, inverse: bool, q_order: list[int], k_order: list[int]
) -> tuple[Tensor, Tensor]:
    """Llama 4 RoPE of q and k (``inverse``: its inverse), laid out as ``qwen2vl_mrope``'s;
    ``freqs`` is the real view of the complex frequencies, (cos, sin) pairs flattened to [.., T, D]."""

    def reference(q, k):  # the inverse: by the conjugate frequencies (autograd through complex numbers
        # gives other results under AOT autograd)
        pairs = freqs.unflatten(-1, (-1, 2))
        pairs = pairs * pairs.new_tensor([1.0, -1.0]) if inverse else pairs
        return llama4_rope_reference(q, k, torch.view_as_complex(pairs.contiguous()))

    return _rotate(q, k, freqs, freqs, 2, inverse, (q_order, k_order), reference, interleaved=True)


@llama4_rope.register_fake
def _(q, k, freqs, inverse, q_order, k_order):
    return _rotate_fake(q, k, q_order, k_order)


def _llama4_rope_setup(ctx, inputs, output):
    q, k, freqs, inverse, _, _ = inputs
    ctx.save_for_backward(freqs)
    ctx.inverse, ctx.orders = inverse, _orders(q, k)


def _llama4_rope_backward(ctx, dq, dk):
    (freqs,) = ctx.saved_tensors
    dq, dk = llama4_rope(_or_zeros(dq, freqs), _or_zeros(dk, freqs), freqs, not ctx.inverse, *ctx.orders)
    return dq, dk, None, None, None, None


llama4_rope.register_autograd(_llama4_rope_backward, setup_context=_llama4_rope_setup)


def _llama4_rope_twin(q, k, freqs_cis, BLOCK_SIZE=None):
    return llama4_rope(q, k, _cos_sin_pairs(q, k, freqs_cis).detach(), False, [], [])


# ----------------------------------------------------------------------------- fused add RMSNorm


@_custom_op("fused_add_rms_norm")
def fused_add_rms_norm(
    X: Tensor, R: Tensor, W: Tensor | None, eps: float, offset: float, casting_mode: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(Y, S, stats)``: ``S = X + R`` and its RMSNorm Y, contiguous in X's shape and dtype; stats
    the fp32 per-row 1/rms [1, rows] (zeros on the reference path)."""
    if not _kernels(X):
        Y, S = fused_add_rms_norm_reference(X, R, W, eps, offset, casting_mode)
        return Y.contiguous(), S.contiguous(), _stats(X, 1).zero_()
    Y, S, rstd, *_ = fused_add_rms_norm_forward(X, R, W, eps, offset, casting_mode)
    return Y, S, rstd.view(1, -1)


@fused_add_rms_norm.register_fake
def _(X, R, W, eps, offset, casting_mode):
    return X.new_empty(X.shape), X.new_empty(X.shape), _stats(X, 1)


@_custom_op("fused_add_rms_norm_backward")
def fused_add_rms_norm_backward_op(
    dY: Tensor, dS: Tensor | None, S: Tensor, W: Tensor | None, stats: Tensor, eps: float, offset: float,
    casting_mode: str, need_dw: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(dX, dW)``: dX, the gradient of X and of R alike (``dS`` None: nothing reached S
    directly), contiguous in S's dtype; dW in W's dtype, empty unless ``need_dw``."""
    if not _kernels(S):
        dX, dW = _reference_grads(lambda s, w: rms_norm_reference(s, w, eps, offset, casting_mode), (S, W), (dY,))
        dX = _or_zeros(dX, S) if dS is None else _or_zeros(dX, S) + dS
        return dX.contiguous(), _or_zeros(dW, W) if need_dw else _empty(S)
    dX, dW = fused_add_rms_norm_backward(dY, dS, S, W, stats[0], offset, casting_mode, None, None, None, False, need_dw)
    return dX, _empty(S) if dW is None else dW


@fused_add_rms_norm_backward_op.register_fake
def _(dY, dS, S, W, stats, eps, offset, casting_mode, need_dw):
    return dY.new_empty(dY.shape, dtype=S.dtype), W.new_empty(W.shape) if need_dw else _empty(S)


def _fused_add_rms_norm_setup(ctx, inputs, output):
    X, R, W, eps, offset, casting_mode = inputs
    ctx.save_for_backward(output[1], W, output[2])
    ctx.settings = (eps, offset, casting_mode)
    ctx.mark_non_differentiable(output[2])


def _fused_add_rms_norm_backward(ctx, dY, dS, _):
    S, W, stats = ctx.saved_tensors
    need_dw = W is not None and ctx.needs_input_grad[2]
    dX, dW = fused_add_rms_norm_backward_op(_or_zeros(dY, S), dS, S, W, stats, *ctx.settings, need_dw)
    return dX, dX, dW if need_dw else None, None, None, None


fused_add_rms_norm.register_autograd(_fused_add_rms_norm_backward, setup_context=_fused_add_rms_norm_setup)


def _fused_add_rms_norm_twin(
    X, R, W, eps, offset=0.0, casting_mode="llama", in_place=False, grad_output_unshared=False
):  # fmt: skip
    """``LigerFusedAddRMSNormFunction.apply`` under compile (``in_place`` changes nothing)."""
    check_norm_inputs(X, W)
    _check_residual(X, R)
    Y, S, _ = fused_add_rms_norm(X, R, W, float(eps), float(offset), casting_mode_name(casting_mode))
    return Y, S


# ----------------------------------------------------------------------------- fused MoE experts


def _moe_uses_kernels(x: Tensor) -> bool:
    """As ``LigerFusedMoEFunction``: the reference for fp64, no tokens, or ``LIGER_KERNEL_IMPL=torch``."""
    return _kernels(x) and x.shape[0] > 0


def _moe_saved_fake(x, gate_up_proj, top_k_index, is_transposed) -> tuple:
    """``(gu, order, bounds, tiles)`` as the forward kernels leave them (see ``fused_moe._route``)."""
    if not _moe_uses_kernels(x):
        return tuple(_empty(x) for _ in range(4))
    pairs, experts = top_k_index.numel(), gate_up_proj.shape[0]
    inter = _dims(gate_up_proj, is_transposed)[0]
    ints = dict(dtype=torch.int32)
    return (
        x.new_empty((pairs, 2 * inter)),
        x.new_empty(pairs, **ints),
        x.new_empty(experts + 2, **ints),
        x.new_empty((3, cdiv(pairs, BLOCK_M) + experts + 1), **ints),
    )


@_custom_op("fused_moe")
def fused_moe(
    x: Tensor, gate_up_proj: Tensor, down_proj: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
    gate_up_proj_bias: Tensor | None, down_proj_bias: Tensor | None, is_transposed: bool, is_concatenated: bool,
    alpha: float | None, limit: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(y, gu, order, bounds, tiles)``: y [T, H], then what the kernels' backward reads (the
    pre-activation and the routing; empty on the reference path). The rows of gu for pairs routed
    to no expert (index E) are left unwritten: nothing reads them."""
    options = (is_transposed, is_concatenated, alpha, limit)
    tensors = (x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias)
    if not _moe_uses_kernels(x):
        return fused_moe_reference(*tensors, *options), *_moe_saved_fake(x, gate_up_proj, top_k_index, is_transposed)
    y, gu, (order, bounds, tiles, _) = fused_moe_forward(
        x.contiguous(), gate_up_proj, down_proj, top_k_index, top_k_weights.to(x.dtype).contiguous(), *tensors[5:],
        *options,
    )  # fmt: skip
    return y, gu, order, bounds, tiles


@fused_moe.register_fake
def _(x, gate_up_proj, down_proj, top_k_index, top_k_weights, *rest):
    return x.new_empty(x.shape), *_moe_saved_fake(x, gate_up_proj, top_k_index, rest[2])


@_custom_op("fused_moe_backward")
def fused_moe_backward_op(
    dy: Tensor, x: Tensor, gate_up_proj: Tensor, down_proj: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
    gate_up_proj_bias: Tensor | None, down_proj_bias: Tensor | None, gu: Tensor, order: Tensor, bounds: Tensor,
    tiles: Tensor, is_transposed: bool, is_concatenated: bool, alpha: float | None, limit: float | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of (x, gate_up_proj, down_proj, top_k_weights, gate_up_proj_bias, down_proj_bias),
    each empty unless ``needs`` (the same six flags) asks; ``gu`` is left intact."""
    options = (is_transposed, is_concatenated, alpha, limit)
    differentiable = (x, gate_up_proj, down_proj, top_k_weights, gate_up_proj_bias, down_proj_bias)
    needs = [need and t is not None for need, t in zip(needs, differentiable)]
    if not _moe_uses_kernels(x):

        def reference(x, gate_up_proj, down_proj, top_k_weights, gate_up_proj_bias, down_proj_bias):
            tensors = (x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias)
            return fused_moe_reference(*tensors, *options)

        grads = _reference_grads(reference, differentiable, (dy,))
    else:
        n_tiles = tiles.shape[1]
        grads = fused_moe_backward(
            dy, x.contiguous(), gate_up_proj, down_proj, top_k_index, top_k_weights.to(x.dtype).contiguous(),
            down_proj_bias, gu.clone(), (order, bounds, tiles, n_tiles), *options, gate_up_proj_bias is not None, needs,
        )  # fmt: skip
    return tuple(_or_zeros(g, t).to(t.dtype) if need else _empty(x) for g, t, need in zip(grads, differentiable, needs))


@fused_moe_backward_op.register_fake
def _(dy, x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias, *rest):
    differentiable = (x, gate_up_proj, down_proj, top_k_weights, gate_up_proj_bias, down_proj_bias)
    return tuple(
        t.new_empty(t.shape) if need and t is not None else _empty(x) for t, need in zip(differentiable, rest[-1])
    )


def _fused_moe_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], *output[1:])
    ctx.options = inputs[7:]
    ctx.mark_non_differentiable(*output[1:])


def _fused_moe_backward(ctx, dy, *_):
    x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_bias, down_bias, *saved = ctx.saved_tensors
    needs = [ctx.needs_input_grad[i] for i in (0, 1, 2, 4, 5, 6)]
    tensors = (x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_bias, down_bias)
    grads = [g if need else None for g, need in zip(fused_moe_backward_op(dy, *tensors, *saved, *ctx.options, needs),
                                                     needs)]  # fmt: skip
    return *grads[:3], None, *grads[3:], None, None, None, None


fused_moe.register_autograd(_fused_moe_backward, setup_context=_fused_moe_setup)


def _fused_moe_twin(
    x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias=None, down_proj_bias=None,
    is_transposed=False, is_concatenated=True, alpha=None, limit=None,
):  # fmt: skip
    tensors = (x, gate_up_proj, down_proj, top_k_index, top_k_weights, gate_up_proj_bias, down_proj_bias)
    _check_inputs(*tensors, is_transposed, alpha, limit)
    alpha, limit = (None, None) if alpha is None else (float(alpha), float(limit))
    return fused_moe(*tensors, bool(is_transposed), bool(is_concatenated), alpha, limit)[0]


# ----------------------------------------------------------------------------- tiled gated MLP


@_custom_op("tiled_gated_mlp")
def tiled_gated_mlp(
    x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor, activation: str, shards: int, blocks: int
) -> Tensor:
    """The gated MLP of x's rows [N, H] -> [N, H_out], in ``shards`` token shards, nothing kept but
    x (``blocks``: the backward's route, see ``LigerTiledGatedMLPFunction``)."""
    if not _kernels(x):
        return gated_mlp_reference(x, gate_weight, up_weight, down_weight, activation).contiguous()
    return tiled_gated_forward(x, gate_weight, up_weight, down_weight, activation, shards)


@tiled_gated_mlp.register_fake
def _(x, gate_weight, up_weight, down_weight, activation, shards, blocks):
    return x.new_empty(x.shape[0], down_weight.shape[0])


@_custom_op("tiled_gated_mlp_backward")
def tiled_gated_mlp_backward(
    dy: Tensor, x: Tensor, gate_weight: Tensor, up_weight: Tensor, down_weight: Tensor, activation: str,
    shards: int, blocks: int, need_x: bool, need_gate: bool, need_up: bool, need_down: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(dx, d_gate, d_up, d_down)``, each empty where not needed: the gate and up matmuls
    recomputed, every gradient one fp32 sum rounded once."""
    weights, needs = (gate_weight, up_weight, down_weight), (need_x, need_gate, need_up, need_down)
    if not _kernels(x):
        reference = lambda *t: gated_mlp_reference(*t, activation)  # noqa: E731
        grads = _reference_grads(reference, (x, *weights), (dy,))
    else:
        grads = tiled_gated_backward(dy, x, *weights, activation, shards, blocks, needs)
    return tuple(g.contiguous() if need else _empty(t) for g, need, t in zip(grads, needs, (x, *weights)))


@tiled_gated_mlp_backward.register_fake
def _(dy, x, gate_weight, up_weight, down_weight, activation, shards, blocks, *needs):
    tensors = (x, gate_weight, up_weight, down_weight)
    return tuple(t.new_empty(t.shape) if need else _empty(t) for t, need in zip(tensors, needs))


def _tiled_gated_mlp_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.settings = inputs[4:]


def _tiled_gated_mlp_backward(ctx, dy):
    x, *weights = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    grads = tiled_gated_mlp_backward(dy, x, *weights, *ctx.settings, *needs)
    return *(g if need else None for g, need in zip(grads, needs)), None, None, None


tiled_gated_mlp.register_autograd(_tiled_gated_mlp_backward, setup_context=_tiled_gated_mlp_setup)


def _tiled_gated_mlp_twin(x, gate_weight, up_weight, down_weight, activation, shards, blocks=None):
    rows, blocks = check_tiled_gated(x, gate_weight, up_weight, down_weight, activation, shards, blocks)
    y = tiled_gated_mlp(rows, gate_weight, up_weight, down_weight, activation, shards, blocks)
    return y.view(*x.shape[:-1], down_weight.shape[0])


if ENABLED:
    _TWINS.update(
        qwen2vl_mrope=_qwen2vl_mrope_twin,
        llama4_rope=_llama4_rope_twin,
        fused_add_rms_norm=_fused_add_rms_norm_twin,
        fused_moe=_fused_moe_twin,
        tiled_gated_mlp=_tiled_gated_mlp_twin,
    )
