"""Residual add and RMSNorm in one pass: ``S = X + R``, ``Y = rms_norm(S)``, both returned.

A pre-norm decoder layer does ``h = residual + out`` then ``norm(h)``: the add reads two tensors and
writes one, and the norm reads it back. Fused, the forward reads X and R and writes S and Y (4
passes instead of 5); the backward reads dY, dS and S and writes dX, one gradient for both X and R
(4 instead of 5: the add of the gradient reaching S directly happens in the norm's backward pass).
These are the RMSNorm kernels of ``ops/norms.py`` with a residual input and a residual gradient,
so the casting modes and ``offset`` are RMSNorm's exactly; only the backward's row tile differs
where the residual gradient would make RMSNorm's spill registers (``residual_plan``).
"""

import functools

import torch

from liger_kernel.ops.norms import (
    CASTING_MODES,
    _num_programs,
    _sum_block_p,
    dense,
    norm_backward,
    norm_forward,
    norm_plan,
    require_kernels,
    rows_of,
    stats_of,
)
from liger_kernel.ops.rms_norm import casting_mode_id, casting_mode_name, rms_norm_reference
from liger_kernel.ops.utils import LigerFunction, cdiv, check_same_shape, fallback_backward, fallback_forward
from liger_kernel.utils import use_triton

# Elements of the backward's row tile per thread when the residual gradient is added (dY, S and dS
# live at once, with W and the dW sums). RMSNorm's tile at 4096 columns, 4 rows over 16 warps (32 a
# thread), then spills: compiled for sm_90 (Triton 3.9, ptxas 13.4, arguments 16-byte aligned as the
# JIT specializes them) it takes 128 registers and 84 B of spill stores and loads per thread (12 B
# without dS); 2 rows (16 a thread) take 99 registers and spill nothing. Llama-3-8B x 16k tokens,
# fwd+bwd on H200: 0.62 ms with the spilling tile, against 0.38 ms for the unfused add then RMSNorm.
# Tiles above this are halved in rows (1024, 2048 and 8192 columns already fit).
RESIDUAL_TILE_PER_THREAD = 16
WARP_SIZE = 32


def fused_add_rms_norm_reference(X, R, W, eps, offset=0.0, casting_mode="llama"):
    """The spec: ``S = X + R`` in X's dtype (the model's own add), then ``rms_norm_reference(S)``.
    Returns ``(Y, S)``, both in X's shape and dtype."""
    S = X + R
    return rms_norm_reference(S, W, eps, offset, casting_mode), S


@functools.lru_cache(maxsize=256)
def residual_plan(plan, device_index: int, per_thread: int = RESIDUAL_TILE_PER_THREAD):
    """``plan`` (a ``NormPlan``) with its backward's row tile cut to at most ``per_thread``
    elements a thread, for a backward that also adds the residual gradient (``device_index`` as
    ``Tensor.get_device()`` gives it: the persistent grid's size)."""
    bwd = plan.bwd
    rows = bwd.block_rows
    while rows > 1 and rows * bwd.block_n > per_thread * WARP_SIZE * bwd.num_warps:
        rows //= 2
    if rows == bwd.block_rows:
        return plan
    n_programs = _num_programs(cdiv(plan.n_rows, rows), device_index)
    return plan._replace(bwd=bwd._replace(block_rows=rows, n_programs=n_programs, sum_block_p=_sum_block_p(n_programs)))


def _backward_plan(S, W, dS):
    """The backward's plan: S's (contiguous, whatever X's layout), with the residual tile when
    there is a residual gradient to add."""
    plan = norm_plan(S, W, None, is_rms=True)
    return plan if dS is None else residual_plan(plan, S.get_device(), RESIDUAL_TILE_PER_THREAD)


def _check_residual(X, R) -> None:
    check_same_shape(X=X, R=R)
    if R.dtype != X.dtype:
        raise TypeError(f"`R` is {R.dtype} but `X` is {X.dtype}: the residual must have X's dtype.")


class LigerFusedAddRMSNormFunction(LigerFunction):
    """``apply(X [..., H], R [..., H], W [H] or None, eps, offset=0.0, casting_mode="llama",
    in_place=False, grad_output_unshared=False) -> (Y, S)``: ``S = X + R`` and its RMSNorm ``Y``,
    both in X's dtype; see ``fused_add_rms_norm_reference``. X and R get the same gradient, ``dS
    + d(norm)/dS``.

    ``in_place``, as in ``LigerRMSNormFunction``: the backward may write the gradient into dY's
    buffer, but only when the caller also passes ``grad_output_unshared=True`` (nothing else reads
    that gradient); otherwise the gradient gets its own buffer.
    """

    @staticmethod
    def forward(
        ctx, X, R, W, eps, offset=0.0, casting_mode="llama", in_place=False, grad_output_unshared=False
    ):  # fmt: skip
        casting = CASTING_MODES[casting_mode_name(casting_mode)]
        plan = norm_plan(X, W, None, is_rms=True)
        _check_residual(X, R)
        if not use_triton(X) or X.dtype is torch.float64:
            ctx.plan = None
            return fallback_forward(ctx, fused_add_rms_norm_reference, X, R, W, eps, offset, casting_mode)
        W, _ = dense(plan, W, None)
        Y, S, stats = norm_forward(plan, X, W, None, eps, offset, casting, residual=R)
        ctx.save_for_backward(S, W, stats)
        ctx.plan, ctx.settings = plan, (offset, casting, in_place and grad_output_unshared)
        return Y, S

    @staticmethod
    def backward(ctx, dY, dS):
        if ctx.plan is None:
            return *fallback_backward(ctx, dY, dS), None, None
        S, W, stats = ctx.saved_tensors
        offset, casting, reuse_dy = ctx.settings
        need_dw = W is not None and ctx.needs_input_grad[2]
        plan = _backward_plan(S, W, dS)
        dX, dW, _ = norm_backward(plan, dY, S, W, None, stats, offset, casting, need_dw, False, reuse_dy, dS)
        return dX, dX, dW, None, None, None, None, None


def fused_add_rms_norm_forward(X, R, W, eps, offset, casting_mode):
    """The forward kernel alone, without autograd: ``(Y, S, RSTD, BLOCK_SIZE, num_warps,
    casting_mode)``: the outputs, then what ``fused_add_rms_norm_backward`` takes (S is what the
    backward reads; RSTD the fp32 per-row 1/rms)."""
    mode = casting_mode_name(casting_mode)
    plan = norm_plan(X, W, None, is_rms=True)
    require_kernels(X)
    _check_residual(X, R)
    W, _ = dense(plan, W, None)
    Y, S, stats = norm_forward(plan, X, W, None, eps, offset, CASTING_MODES[mode], residual=R)
    return Y, S, stats[0], plan.fwd_block_n, plan.fwd_warps, mode


def fused_add_rms_norm_backward(
    dY, dS_out, S, W, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, num_stages, in_place, needs_dw=None
):  # fmt: skip
    """The backward kernel alone: ``(dX, dW)`` from what ``fused_add_rms_norm_forward`` returned;
    dX (in dY's shape) is the gradient of X and of R alike. ``dS_out``: the gradient reaching S
    directly (None: none). ``in_place=True`` writes dX into dY's buffer (when dY is dense): here
    the caller holds dY and decides. ``BLOCK_SIZE``, ``num_warps`` and ``num_stages`` are accepted
    for compatibility: the launch settings come from the shape."""
    plan = _backward_plan(S, W, dS_out)
    require_kernels(S)
    W, _ = dense(plan, W, None)
    need_dw = W is not None and (needs_dw is None or bool(needs_dw))
    stats = stats_of(plan.n_rows, RSTD=RSTD)
    casting = casting_mode_id(casting_mode)
    dX, dW, _ = norm_backward(
        plan, dY, rows_of(plan, S), W, None, stats, offset, casting, need_dw, False, bool(in_place), dS_out
    )
    return dX.view(dY.shape), dW
