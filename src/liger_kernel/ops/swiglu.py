"""SwiGLU: ``silu(a) * b``, the gated activation of Llama-style MLPs.

One pass forward (read a, b; write c) and one backward that recomputes the activation instead
of storing it (read dc, a, b; write da, db): 8 tensor passes in all, the memory floor. The
kernels here also serve GeGLU (``ops/geglu.py``) through the ``ACTIVATION`` constexpr.

``LigerGatedMLPFunction`` is the whole MLP ``down(act(gate(x)) * up(x))`` as one autograd node
that keeps x, a = gate(x) and b = up(x) for backward but not c = act(a) * b, which the down
projection's weight gradient needs: the backward kernel recomputes c in the pass that gives da
and db (one more write, written over dc) and saves one [tokens, intermediate] tensor per layer
(256 MB at 16384 tokens x 8192 in bf16).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    LigerFunction,
    as_rows,
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    empty_output,
    fallback_backward,
    fallback_forward,
    next_power_of_2,
)
from liger_kernel.utils import use_triton

SQRT_2_OVER_PI = 0.7978845608028654
GELU_CUBIC = 0.044715


@triton.jit
def _activation_and_slope(a, ACTIVATION: tl.constexpr):
    """act(a) and act'(a) in fp32 for ``silu`` or tanh-approximated ``gelu``."""
    if ACTIVATION == "silu":
        s = tl.sigmoid(a)
        act = a * s
        slope = s * (1.0 + a * (1.0 - s))
    else:
        inner = 0.7978845608028654 * (a + 0.044715 * a * a * a)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # tanh without libdevice
        act = 0.5 * a * (1.0 + t)
        slope = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * a * a)
    return act, slope


@triton.jit
def _block_offsets(n_cols, blocks_per_row, BLOCK: tl.constexpr):
    """(row, cols, mask) of this program's block: a 1-D grid over rows x column blocks."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // blocks_per_row
    cols = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    return row, cols, cols < n_cols


@triton.jit
def _gated_forward_kernel(
    a_ptr, b_ptr, c_ptr, stride_a, stride_b, stride_c, n_cols, blocks_per_row,
    ACTIVATION: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    a = tl.load(a_ptr + row * stride_a + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
    act, _ = _activation_and_slope(a, ACTIVATION)
    tl.store(c_ptr + row * stride_c + cols, (act * b).to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_backward_kernel(
    dc_ptr, a_ptr, b_ptr, da_ptr, db_ptr, stride_dc, stride_a, stride_b, stride_da, stride_db,
    n_cols, blocks_per_row, ACTIVATION: tl.constexpr, STORE_C: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """da = dc * b * act'(a), db = dc * act(a); with ``STORE_C`` also c = act(a) * b, written
    over dc (each element is read before it is overwritten, by the same program)."""
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    dc = tl.load(dc_ptr + row * stride_dc + cols, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + row * stride_a + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
    act, slope = _activation_and_slope(a, ACTIVATION)
    tl.store(da_ptr + row * stride_da + cols, (dc * b * slope).to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + row * stride_db + cols, (dc * act).to(db_ptr.dtype.element_ty), mask=mask)
    if STORE_C:
        tl.store(dc_ptr + row * stride_dc + cols, (act * b).to(dc_ptr.dtype.element_ty), mask=mask)


# Widest column block of one program, and elements per warp. Swept on H100 at 8192x14336 bf16
# (CUDA-graph GPU time): 8192 over 16 warps -> forward 99%, backward 99% of the memory floor;
# 2048 over 8 warps -> 98% / 97%. Contiguous tensors are launched as one flat row, so no block
# is partly masked (14336 columns would leave a quarter of every second block idle).
BLOCK = 8192
ELEMENTS_PER_WARP = 512


def _layout(*tensors):
    """How the kernels see the tensors: ``(flat, tensors, row strides, n_cols, grid,
    blocks_per_row, BLOCK, num_warps)``. All contiguous (``flat``): one flat row of every
    element, the tensors as they are (no views: each costs microseconds of host time). Otherwise
    rows of the last dimension (``as_rows`` copies only what has no row view)."""
    flat = all(t.is_contiguous() for t in tensors)
    if flat:
        n_rows, n_cols, strides = 1, tensors[0].numel(), (0,) * len(tensors)
    else:
        tensors = tuple(as_rows(t) for t in tensors)
        (n_rows, n_cols), strides = tensors[0].shape, tuple(t.stride(0) for t in tensors)
    block = min(next_power_of_2(n_cols), BLOCK)
    blocks_per_row = cdiv(n_cols, block)
    warps = max(4, min(16, block // ELEMENTS_PER_WARP))
    return flat, tensors, strides, n_cols, (n_rows * blocks_per_row,), blocks_per_row, block, warps


def gated_forward(a: torch.Tensor, b: torch.Tensor, activation: str) -> torch.Tensor:
    c = empty_output(a.shape, a)
    if c.numel():
        _, (a2, b2, c2), strides, n_cols, grid, per_row, block, warps = _layout(a, b, c)
        _gated_forward_kernel[grid](a2, b2, c2, *strides, n_cols, per_row, activation, block, num_warps=warps)
    return c


def gated_backward(dc, a, b, activation: str, in_place: bool, store_c: bool = False):
    """``(da, db)``; with ``in_place`` they overwrite ``a`` and ``b`` (no new memory) when those
    are laid out as the kernels need. With ``store_c``, ``act(a) * b`` is also written over
    ``dc``, which must then be a contiguous buffer the caller owns (``LigerGatedMLPFunction``
    recomputes c this way, in the same pass)."""
    if not a.numel():
        return torch.empty_like(a), torch.empty_like(b)
    if store_c and not dc.is_contiguous():
        raise ValueError("`dc` must be contiguous to receive c (store_c=True).")
    flat, (dc2, a2, b2), strides, n_cols, grid, per_row, block, warps = _layout(dc, a, b)
    if in_place and a2.data_ptr() == a.data_ptr() and b2.data_ptr() == b.data_ptr():
        da, db, da2, db2 = a, b, a2, b2  # written over a and b (through their row views)
    else:
        da, db = empty_output(a.shape, a), empty_output(b.shape, b)
        da2, db2 = da, db  # contiguous: row stride n_cols
    out_strides = (0, 0) if flat else (da2.stride(0) if da2 is a2 else n_cols, db2.stride(0) if db2 is b2 else n_cols)
    _gated_backward_kernel[grid](
        dc2, a2, b2, da2, db2, *strides, *out_strides, n_cols, per_row, activation, store_c, block, num_warps=warps
    )
    return da, db


def check_gated_inputs(a, b):
    check_float("a", a)
    check_float("b", b)
    check_same_device(a=a, b=b)
    check_same_dtype(a=a, b=b)
    check_same_shape(a=a, b=b)


def make_gated_function(name: str, activation: str, reference):
    """The autograd Function ``(a, b, in_place=False) -> act(a) * b`` for one activation.

    ``in_place=True`` writes the gradients into the storage of ``a`` and ``b`` (saving two
    tensors of memory); safe only when nothing else reads them afterwards, as in an MLP where
    they are the fresh outputs of the gate and up projections.
    """

    def forward(ctx, a, b, in_place=False):
        check_gated_inputs(a, b)
        ctx.use_triton = use_triton(a)
        if not ctx.use_triton:
            return fallback_forward(ctx, reference, a, b)
        ctx.in_place = in_place
        ctx.save_for_backward(a, b)
        return gated_forward(a, b, activation)

    def backward(ctx, dc):
        if not ctx.use_triton:
            return (*fallback_backward(ctx, dc), None)
        a, b = ctx.saved_tensors
        da, db = gated_backward(dc, a, b, activation, ctx.in_place)
        return da, db, None

    return type(
        name,
        (LigerFunction,),
        {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward),
            "__doc__": f"``{activation}(a) * b`` with a fused Triton forward and backward.",
            "__module__": reference.__module__,
        },
    )


def swiglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The spec: ``silu(a) * b`` in the inputs' dtype, as Hugging Face computes it."""
    return F.silu(a) * b


LigerSiLUMulFunction = make_gated_function("LigerSiLUMulFunction", "silu", swiglu_reference)

ACTIVATIONS = ("silu", "gelu_tanh")


def gated_mlp_reference(x, gate_weight, up_weight, down_weight, activation="silu"):
    """The spec of the fused MLP: ``down(act(x @ gate_weight.T) * (x @ up_weight.T))``.

    x: [..., H]; gate_weight, up_weight: [I, H]; down_weight: [H_out, I] -> [..., H_out].
    ``up_weight=None``: ``gate_weight`` is Phi-3's stacked [2I, H] ``gate_up_proj`` weight.
    """
    if up_weight is None:
        a, b = F.linear(x, gate_weight).chunk(2, dim=-1)
    else:
        a, b = F.linear(x, gate_weight), F.linear(x, up_weight)
    act = F.silu(a) if activation == "silu" else F.gelu(a, approximate="tanh")
    return F.linear(act * b, down_weight)


def _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}.")
    for name, t in (("x", x), ("gate_weight", gate_weight), ("down_weight", down_weight)):
        check_float(name, t)
    if up_weight is not None:
        check_float("up_weight", up_weight)
    check_same_device(x=x, gate_weight=gate_weight, up_weight=up_weight, down_weight=down_weight)
    check_same_dtype(x=x, gate_weight=gate_weight, up_weight=up_weight, down_weight=down_weight)
    if gate_weight.dim() != 2 or gate_weight.shape[1] != x.shape[-1]:
        raise ValueError(f"`gate_weight` has shape {tuple(gate_weight.shape)}; expected [I, {x.shape[-1]}] for `x`.")
    inter = gate_weight.shape[0] if up_weight is not None else gate_weight.shape[0] // 2
    if up_weight is not None and up_weight.shape != gate_weight.shape:
        raise ValueError(f"`up_weight` has shape {tuple(up_weight.shape)}; expected {tuple(gate_weight.shape)}.")
    if up_weight is None and gate_weight.shape[0] % 2:
        raise ValueError(f"`gate_weight` stacks gate and up (up_weight=None) but has {gate_weight.shape[0]} rows.")
    if down_weight.dim() != 2 or down_weight.shape[1] != inter:
        raise ValueError(f"`down_weight` has shape {tuple(down_weight.shape)}; expected [H_out, {inter}].")


class LigerGatedMLPFunction(LigerFunction):
    """``down(act(x @ gate_weight.T) * (x @ up_weight.T))`` saving only x, a and b for backward.

    x: [..., H]; gate_weight, up_weight: [I, H]; down_weight: [H_out, I]; activation: ``"silu"``
    (SwiGLU) or ``"gelu_tanh"`` (GeGLU) -> [..., H_out]. ``up_weight=None``: ``gate_weight`` is
    Phi-3's stacked [2I, H] weight, computed as one matmul whose halves are a and b. Backward
    writes da and db over the saved a and b (its own buffers): call backward once per forward.
    """

    @staticmethod
    def forward(ctx, x, gate_weight, up_weight, down_weight, activation="silu"):
        _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation)
        ctx.use_triton = use_triton(x)
        if not ctx.use_triton:
            return fallback_forward(ctx, gated_mlp_reference, x, gate_weight, up_weight, down_weight, activation)
        x2 = x.reshape(-1, x.shape[-1])
        if up_weight is None:
            ab = x2 @ gate_weight.T
            a, b = ab.chunk(2, dim=-1)  # strided halves: the kernels take them without copies
            ctx.save_for_backward(x2, gate_weight, down_weight, ab)
        else:
            a, b = x2 @ gate_weight.T, x2 @ up_weight.T
            ctx.save_for_backward(x2, gate_weight, up_weight, down_weight, a, b)
        ctx.stacked, ctx.activation, ctx.x_shape = up_weight is None, activation, x.shape
        y = gated_forward(a, b, activation) @ down_weight.T
        return y.view(*x.shape[:-1], down_weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        if not ctx.use_triton:
            return fallback_backward(ctx, dy)
        if ctx.stacked:
            x2, gate_weight, down_weight, ab = ctx.saved_tensors
            up_weight = None
            a, b = ab.chunk(2, dim=-1)
        else:
            x2, gate_weight, up_weight, down_weight, a, b = ctx.saved_tensors
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = d_gate = d_up = d_down = None
        if not (need_x or need_gate or need_up):
            d_down = dy2.T @ gated_forward(a, b, ctx.activation) if need_down else None
            return None, None, None, d_down, None
        # One pass gives da and db (over a and b) and c = act(a) * b (over dc): c, which the down
        # projection's weight gradient needs, is never stored between forward and backward.
        dc = dy2 @ down_weight
        da, db = gated_backward(dc, a, b, ctx.activation, in_place=True, store_c=need_down)
        d_down = dy2.T @ dc if need_down else None
        del dc
        if ctx.stacked:  # da and db were written over the halves of ab: one matmul each for dW and dx
            d_gate = ab.T @ x2 if need_gate else None
            dx = ab @ gate_weight if need_x else None
        else:
            d_gate = da.T @ x2 if need_gate else None
            d_up = db.T @ x2 if need_up else None
            dx = torch.addmm(da @ gate_weight, db, up_weight) if need_x else None
        return None if dx is None else dx.view(ctx.x_shape), d_gate, d_up, d_down, None
