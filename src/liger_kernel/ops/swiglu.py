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

import functools
import numbers
import sys
import threading

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from liger_kernel.ops.utils import (
    FLOAT_DTYPES,
    LigerFunction,
    as_rows,
    cdiv,
    check_float,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    empty_like_output,
    fallback_backward,
    fallback_forward,
    launch,
    next_power_of_2,
)
from liger_kernel.utils import use_triton


@triton.jit
def silu(x):
    """``x * sigmoid(x)`` of an fp32 block (the peer's public jit helper; our kernels call it)."""
    return x * tl.sigmoid(x)


@triton.jit
def _activation_and_slope(a, ACTIVATION: tl.constexpr):
    """act(a) and act'(a) in fp32 for ``silu`` or tanh-approximated ``gelu``."""
    if ACTIVATION == "silu":
        s = tl.sigmoid(a)
        act = silu(a)
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
    a_ptr, b_ptr, c_ptr, stride_a, stride_b, stride_c, n_cols, blocks_per_row, gate_multiplier, down_multiplier,
    ACTIVATION: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """c = down_multiplier * act(gate_multiplier * a) * b, rounded once."""
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    a = tl.load(a_ptr + row * stride_a + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
    act, _ = _activation_and_slope(a * gate_multiplier, ACTIVATION)
    tl.store(c_ptr + row * stride_c + cols, (act * b * down_multiplier).to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_backward_kernel(
    dc_ptr, a_ptr, b_ptr, da_ptr, db_ptr, stride_dc, stride_a, stride_b, stride_da, stride_db,
    n_cols, blocks_per_row, gate_multiplier, down_multiplier,
    ACTIVATION: tl.constexpr, STORE_C: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """With z = gate_multiplier * a and g = down_multiplier * dc: da = g * b * act'(z) *
    gate_multiplier, db = g * act(z); with ``STORE_C`` also c = down_multiplier * act(z) * b,
    written over dc. da and db may be a and b, c over dc: each element is read before it is
    overwritten, by the same program."""
    row, cols, mask = _block_offsets(n_cols, blocks_per_row, BLOCK)
    dc = tl.load(dc_ptr + row * stride_dc + cols, mask=mask, other=0.0).to(tl.float32) * down_multiplier
    a = tl.load(a_ptr + row * stride_a + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
    act, slope = _activation_and_slope(a * gate_multiplier, ACTIVATION)
    da = dc * b * slope * gate_multiplier
    tl.store(da_ptr + row * stride_da + cols, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + row * stride_db + cols, (dc * act).to(db_ptr.dtype.element_ty), mask=mask)
    if STORE_C:
        c = act * b * down_multiplier
        tl.store(dc_ptr + row * stride_dc + cols, c.to(dc_ptr.dtype.element_ty), mask=mask)


# Widest column block of one program, and elements per warp. Swept on H100 at 8192x14336 bf16
# (CUDA-graph GPU time): 8192 over 16 warps -> forward 99%, backward 99% of the memory floor;
# 2048 over 8 warps -> 98% / 97%. Contiguous tensors are launched as one flat row, so no block
# is partly masked (14336 columns would leave a quarter of every second block idle).
BLOCK = 8192
ELEMENTS_PER_WARP = 512


@functools.lru_cache(maxsize=256)
def _settings(n_rows: int, n_cols: int) -> tuple:
    """``(grid, blocks_per_row, BLOCK, num_warps)`` for rows of ``n_cols``, once per shape."""
    block = min(next_power_of_2(n_cols), BLOCK)
    blocks_per_row = cdiv(n_cols, block)
    warps = max(4, min(16, block // ELEMENTS_PER_WARP))
    return (n_rows * blocks_per_row,), blocks_per_row, block, warps


def _layout(*tensors):
    """How the kernels see the tensors (all of one shape): ``(tensors, row strides, n_cols, grid,
    blocks_per_row, BLOCK, num_warps)``. All contiguous: one flat row of every element, the
    tensors as they are (no views: each costs microseconds of host time). Otherwise rows of the
    last dimension (``as_rows`` copies only what has no row view)."""
    if all(t.is_contiguous() for t in tensors):
        n_rows, n_cols, strides = 1, tensors[0].numel(), (0,) * len(tensors)
    else:
        tensors = tuple(as_rows(t) for t in tensors)
        (n_rows, n_cols), strides = tensors[0].shape, tuple(t.stride(0) for t in tensors)
    return (tensors, strides, n_cols, *_settings(n_rows, n_cols))


def gated_forward(a, b, activation: str, gate_multiplier: float = 1.0, down_multiplier: float = 1.0):
    """``down_multiplier * act(gate_multiplier * a) * b`` into a new tensor of a's shape."""
    c = empty_like_output(a)
    if c.numel():
        (a2, b2, c2), strides, n_cols, grid, per_row, block, warps = _layout(a, b, c)
        scalars = (*strides, n_cols, per_row, gate_multiplier, down_multiplier, activation, block)
        launch(_gated_forward_kernel, grid, (a2, b2, c2), scalars, warps)
    return c


def gated_backward(
    dc, a, b, activation: str, da=None, db=None, store_c=False, gate_multiplier=1.0, down_multiplier=1.0
):  # fmt: skip
    """``(da, db)``, written into the given ``da`` / ``db`` buffers (tensors of a's shape that have
    a row view: ``a`` and ``b`` themselves to reuse their memory, or the halves of one stacked
    gradient) or into new tensors. With ``store_c``, ``down_multiplier * act(gate_multiplier * a)
    * b`` is also written over ``dc``, which must then be a contiguous buffer the caller owns
    (``LigerGatedMLPFunction`` recomputes c this way, in the same pass)."""
    da = empty_like_output(a) if da is None else da
    db = empty_like_output(b) if db is None else db
    if not a.numel():
        return da, db
    if store_c and not dc.is_contiguous():
        raise ValueError("`dc` must be contiguous to receive c (store_c=True).")
    views, strides, n_cols, grid, per_row, block, warps = _layout(dc, a, b, da, db)
    if views[3] is not da and (views[3].data_ptr() != da.data_ptr() or views[4].data_ptr() != db.data_ptr()):
        raise ValueError("`da` and `db` must have row views (unit column stride, non-overlapping rows).")
    scalars = (*strides, n_cols, per_row, gate_multiplier, down_multiplier, activation, store_c, block)
    launch(_gated_backward_kernel, grid, views, scalars, warps)
    return da, db


def check_gated_inputs(a, b):
    if (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dtype in FLOAT_DTYPES
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.device == b.device
    ):
        return  # the common case in one expression: the checks below cost ~1 us each per call
    check_float("a", a)
    check_float("b", b)
    check_same_device(a=a, b=b)
    check_same_dtype(a=a, b=b)
    check_same_shape(a=a, b=b)


def check_multiplier(name: str, value) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a Python float (the model config's value), got {type(value).__name__}.")
    return float(value)


# ----------------------------------------------------------------------------- buffer reuse


def _reader_counts(t: torch.Tensor) -> tuple:
    """(references to t's TensorImpl, Python references to t, references to its storage)."""
    return t._use_count(), sys.getrefcount(t), torch._C._storage_Use_Count(t.untyped_storage()._cdata)


PRIVATE_COUNTS = None  # set at import by ``_Probe``


def reuse_saved(ctx, *saved) -> list:
    """For each saved input, itself where backward may write its gradient over it, else None.

    Call it with the tensors just unpacked from ``ctx.saved_tensors`` into local names and no
    other reference: the counts that say "private" are measured at import through this very path.
    Never a leaf (a parameter, or a tensor built outside autograd: its values are the caller's),
    a view, a non-contiguous tensor, or two inputs sharing memory. ``ctx.in_place``: None (the
    default) reuses only what nothing but this node can read any more: no other reference to
    its TensorImpl (a Python name, another node's saved tensors, a view) nor to its storage (a
    ``detach()``); nobody can observe the write, and the Function's memory is Liger's (one
    [N, I] tensor beyond the inputs for fwd+bwd instead of three). True reuses whatever holds
    it; False never. A reused input's version is bumped, so autograd refuses a later use of it
    instead of reading a gradient, and the reuse is recorded for ``check_not_reused``.
    """
    out = [None] * len(saved)
    if ctx.in_place is False:
        return out
    for i, t in enumerate(saved):
        if t.grad_fn is None or t._base is not None or not t.is_contiguous():
            continue
        # Private inputs share no memory (the storage count says so); forced ones are checked.
        if ctx.in_place is None:
            if PRIVATE_COUNTS is None and not getattr(ctx, "calibrating", False):
                continue  # this torch has no reference counts to read: never reuse by default
            ctx.reader_counts = _reader_counts(t)
            reuse = ctx.reader_counts == PRIVATE_COUNTS
        else:
            reuse = _alone(t, saved)
        if reuse:
            torch.autograd.graph.increment_version(t)
            ctx.reused, out[i] = True, t
    return out


def _alone(t, saved) -> bool:
    """Whether no other of the ``saved`` tensors shares ``t``'s memory."""
    ptr = t.untyped_storage().data_ptr()
    return sum(s.untyped_storage().data_ptr() == ptr for s in saved) == 1


class _Probe(torch.autograd.Function):
    """Saves a fresh intermediate and, in backward, where nothing but this node holds it, takes
    its reader counts through ``reuse_saved``: what "private" reads as on this Python and torch."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        ctx.in_place, ctx.calibrating = None, True
        return a.clone()

    @staticmethod
    def backward(ctx, dc):
        global PRIVATE_COUNTS
        (a,) = ctx.saved_tensors
        reuse_saved(ctx, a)
        PRIVATE_COUNTS = ctx.reader_counts
        return dc


def _calibrate() -> None:
    try:
        _Probe.apply(torch.zeros(2, requires_grad=True) * 1).sum().backward()
    except AttributeError:  # torch without Tensor._use_count / _storage_Use_Count (private APIs)
        pass


# In a fresh thread: grad mode, inference mode and saved-tensor hooks are thread-local, so an
# import under no_grad or inside a checkpointed region neither fails nor skews the counts.
_probe_thread = threading.Thread(target=_calibrate)
_probe_thread.start()
_probe_thread.join()


def check_not_reused(ctx, name: str, hint: str = "") -> None:
    """Raise on a second backward through a retained graph whose first backward reused buffers."""
    if getattr(ctx, "reused", False):
        raise RuntimeError(
            f"{name}: backward ran a second time through one graph (retain_graph=True), but the first wrote "
            f"gradients over saved tensors that only this node read. "
            + (hint or f"Pass in_place=False to {name} to backward twice.")
        )


# ----------------------------------------------------------------------------- autograd Functions


def gated_apply_forward(ctx, reference, activation, a, b, gate_multiplier, down_multiplier, in_place):
    """The forward shared by the gated Functions (the reference gets the multipliers only when
    it is SwiGLU's, which takes them)."""
    check_gated_inputs(a, b)
    if in_place not in (None, True, False):
        raise TypeError(f"`in_place` must be None, True or False, got {in_place!r}.")
    ctx.use_triton = use_triton(a)
    if not ctx.use_triton:
        extra = (gate_multiplier, down_multiplier) if activation == "silu" else ()
        return fallback_forward(ctx, reference, a, b, *extra)
    ctx.save_for_backward(a, b)
    ctx.activation, ctx.multipliers, ctx.in_place = activation, (gate_multiplier, down_multiplier), in_place
    return gated_forward(a, b, activation, gate_multiplier, down_multiplier)


def gated_apply_backward(ctx, name, dc):
    """``(da, db)`` of the gated Functions, over a and b where ``reuse_saved`` allows."""
    check_not_reused(ctx, name)
    a, b = ctx.saved_tensors
    da, db = reuse_saved(ctx, a, b)
    return gated_backward(dc, a, b, ctx.activation, da, db, False, *ctx.multipliers)


def swiglu_reference(a, b, gate_multiplier=1.0, down_multiplier=1.0):
    """The spec: ``down_multiplier * silu(gate_multiplier * a) * b`` in the inputs' dtype. With
    the multipliers this is Falcon-H1's MLP activation, ``up * act(gate * gate_multiplier)``,
    with the ``* down_multiplier`` it applies after ``down_proj`` moved before it (the same
    value for a bias-free ``down_proj``, one pass over the [N, H] output fewer)."""
    return F.silu(a * gate_multiplier) * b * down_multiplier


class LigerSiLUMulFunction(LigerFunction):
    """``down_multiplier * silu(gate_multiplier * a) * b`` with a fused Triton forward and backward.

    ``forward(a, b, gate_multiplier=1.0, down_multiplier=1.0, in_place=None)``: a, b of one shape;
    the multipliers are Python floats (Falcon-H1's ``mlp_multipliers``), applied inside the
    kernels in fp32 (no extra pass). ``in_place`` (ours, after the peer's arguments): whether
    backward may write da and db over a and b; see ``reuse_saved``. Leaves are never written.
    """

    @staticmethod
    def forward(ctx, a, b, gate_multiplier=1.0, down_multiplier=1.0, in_place=None):
        gate_multiplier = check_multiplier("gate_multiplier", gate_multiplier)
        down_multiplier = check_multiplier("down_multiplier", down_multiplier)
        return gated_apply_forward(ctx, swiglu_reference, "silu", a, b, gate_multiplier, down_multiplier, in_place)

    @staticmethod
    def backward(ctx, dc):
        if not ctx.use_triton:
            return (*fallback_backward(ctx, dc), None)
        return (*gated_apply_backward(ctx, "LigerSiLUMulFunction", dc), None, None, None)


def reference_vjp(reference, dc, *inputs):
    """Gradients of ``reference(*inputs)`` for the upstream ``dc``: the op helpers' PyTorch path."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        return torch.autograd.grad(reference(*leaves), leaves, dc)


def swiglu_forward(a, b, gate_multiplier=1.0):
    """The peer's op helper: ``(a, b, c)`` with ``c = silu(gate_multiplier * a) * b``, no autograd."""
    check_gated_inputs(a, b)
    gate_multiplier = check_multiplier("gate_multiplier", gate_multiplier)
    if not use_triton(a):
        return a, b, swiglu_reference(a, b, gate_multiplier)
    return a, b, gated_forward(a, b, "silu", gate_multiplier)


def swiglu_backward(a, b, dc, gate_multiplier=1.0):
    """The peer's op helper: ``(da, db)`` of ``swiglu_forward`` for the upstream ``dc``, as new
    tensors (a and b are left intact)."""
    check_gated_inputs(a, b)
    check_same_shape(a=a, dc=dc)
    gate_multiplier = check_multiplier("gate_multiplier", gate_multiplier)
    if not use_triton(a):
        return reference_vjp(lambda x, y: swiglu_reference(x, y, gate_multiplier), dc, a, b)
    return gated_backward(dc, a, b, "silu", gate_multiplier=gate_multiplier)


def swiglu_fused_gate_up_reference(y):
    """The spec of the stacked form: ``silu(gate) * up`` for ``y = cat(gate, up, dim=-1)``."""
    gate, up = y.chunk(2, dim=-1)
    return F.silu(gate) * up


def _check_stacked(y):
    check_float("y", y)
    if y.dim() == 0 or y.shape[-1] % 2:
        raise ValueError(
            f"`y` stacks gate and up on its last dimension, which must be even; got shape {tuple(y.shape)}."
        )


def swiglu_fused_gate_up_forward(y):
    """``silu(gate) * up`` ([..., I]) of the stacked projection ``y = cat(gate, up)`` ([..., 2I]),
    reading the halves in place. No autograd."""
    _check_stacked(y)
    if not use_triton(y):
        return swiglu_fused_gate_up_reference(y)
    return gated_forward(*y.chunk(2, dim=-1), "silu")


def swiglu_fused_gate_up_backward(y, dc, dy=None):
    """``dy`` ([..., 2I]) of ``swiglu_fused_gate_up_forward`` for the upstream ``dc`` ([..., I]):
    into ``dy`` when given (``y`` itself to reuse its memory), else a new tensor."""
    _check_stacked(y)
    if not use_triton(y):
        return reference_vjp(swiglu_fused_gate_up_reference, dc, y)[0]
    dy = empty_like_output(y) if dy is None else dy
    gated_backward(dc, *y.chunk(2, dim=-1), "silu", *dy.chunk(2, dim=-1))
    return dy


class LigerFusedGateUpSiLUMulFunction(LigerFunction):
    """``silu(gate) * up`` of one stacked projection ``y = cat(gate, up, dim=-1)`` (Phi-3's
    ``gate_up_proj``): ``forward(y, in_place=False)`` -> [..., I]. The halves are read as strided
    views, no copies. ``in_place``: as for ``LigerSiLUMulFunction`` (None: dy over y when nothing
    else can read y), with the peer's default False (dy always new)."""

    @staticmethod
    def forward(ctx, y, in_place=False):
        _check_stacked(y)
        ctx.use_triton = use_triton(y)
        if not ctx.use_triton:
            return fallback_forward(ctx, swiglu_fused_gate_up_reference, y)
        ctx.save_for_backward(y)
        ctx.in_place = in_place
        return swiglu_fused_gate_up_forward(y)

    @staticmethod
    def backward(ctx, dc):
        if not ctx.use_triton:
            return (*fallback_backward(ctx, dc), None)
        check_not_reused(ctx, "LigerFusedGateUpSiLUMulFunction")
        (y,) = ctx.saved_tensors
        (dy,) = reuse_saved(ctx, y)
        return swiglu_fused_gate_up_backward(y, dc, dy), None


ACTIVATIONS = ("silu", "gelu_tanh")


def gated_mlp_reference(
    x, gate_weight, up_weight, down_weight, activation="silu", gate_multiplier=1.0, down_multiplier=1.0
):  # fmt: skip
    """The spec of the fused MLP: ``down(act(gate_multiplier * x @ gate_weight.T) * (x @ up_weight.T))
    * down_multiplier`` (the multipliers are Falcon-H1's, applied where it applies them).

    x: [..., H]; gate_weight, up_weight: [I, H]; down_weight: [H_out, I] -> [..., H_out].
    ``up_weight=None``: ``gate_weight`` is Phi-3's stacked [2I, H] ``gate_up_proj`` weight.
    """
    if up_weight is None:
        a, b = F.linear(x, gate_weight).chunk(2, dim=-1)
    else:
        a, b = F.linear(x, gate_weight), F.linear(x, up_weight)
    a = a * gate_multiplier
    act = F.silu(a) if activation == "silu" else F.gelu(a, approximate="tanh")
    return F.linear(act * b, down_weight) * down_multiplier


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
    Phi-3's stacked [2I, H] weight, computed as one matmul whose halves are a and b. The
    multipliers (Falcon-H1) are applied inside the gated kernels. Backward writes da and db
    over the saved a and b (its own buffers, versions bumped): a second backward through a
    retained graph raises.
    """

    @staticmethod
    def forward(
        ctx, x, gate_weight, up_weight, down_weight, activation="silu", gate_multiplier=1.0, down_multiplier=1.0
    ):
        _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation)
        multipliers = (
            check_multiplier("gate_multiplier", gate_multiplier),
            check_multiplier("down_multiplier", down_multiplier),
        )
        ctx.use_triton = use_triton(x)
        if not ctx.use_triton:
            args = (x, gate_weight, up_weight, down_weight, activation, *multipliers)
            return fallback_forward(ctx, gated_mlp_reference, *args)
        x2 = x.reshape(-1, x.shape[-1])
        if up_weight is None:
            ab = x2 @ gate_weight.T
            a, b = ab.chunk(2, dim=-1)  # strided halves: the kernels take them without copies
            ctx.save_for_backward(x2, gate_weight, down_weight, ab)
        else:
            a, b = x2 @ gate_weight.T, x2 @ up_weight.T
            ctx.save_for_backward(x2, gate_weight, up_weight, down_weight, a, b)
        ctx.stacked, ctx.activation, ctx.x_shape, ctx.multipliers = up_weight is None, activation, x.shape, multipliers
        c = gated_forward(a, b, activation, *multipliers)
        # Written through a 2-D view into the output's own storage: a view returned from a Function
        # cannot be modified in place (Llama 4's MoE adds the routed experts into the shared one's).
        y = c.new_empty(*x.shape[:-1], down_weight.shape[0])
        torch.matmul(c, down_weight.T, out=y.view(-1, down_weight.shape[0]))
        return y

    @staticmethod
    def backward(ctx, dy):
        if not ctx.use_triton:
            return fallback_backward(ctx, dy)
        check_not_reused(ctx, "LigerGatedMLPFunction", "Call backward once per forward.")
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
            d_down = dy2.T @ gated_forward(a, b, ctx.activation, *ctx.multipliers) if need_down else None
            return None, None, None, d_down, None, None, None
        # One pass gives da and db (over a and b) and c = act(a) * b (over dc): c, which the down
        # projection's weight gradient needs, is never stored between forward and backward.
        dc = dy2 @ down_weight
        da, db = gated_backward(dc, a, b, ctx.activation, a, b, need_down, *ctx.multipliers)
        for t in (ab,) if ctx.stacked else (a, b):
            torch.autograd.graph.increment_version(t)
        ctx.reused = True
        d_down = dy2.T @ dc if need_down else None
        del dc
        if ctx.stacked:  # da and db were written over the halves of ab: one matmul each for dW and dx
            d_gate = ab.T @ x2 if need_gate else None
            dx = ab @ gate_weight if need_x else None
        else:
            d_gate = da.T @ x2 if need_gate else None
            d_up = db.T @ x2 if need_up else None
            dx = torch.addmm(da @ gate_weight, db, up_weight) if need_x else None
        return None if dx is None else dx.view(ctx.x_shape), d_gate, d_up, d_down, None, None, None
