"""The ops as ``torch.library`` custom ops, so that ``torch.compile(fullgraph=True)`` traces a patched
model without a graph break: each op has a fake (meta) implementation that gives its outputs'
shapes, dtypes and strides, and a registered autograd formula whose backward is a custom op too.

The eager path is untouched: modules and functionals call ``apply_of(Function, op)(...)``, which is
the Function's own ``apply`` unless Dynamo is tracing; then it is the twin below, with the
Function's signature, built on these ops. Eager calls so pay no custom-op dispatch (Python, per
call) and keep the Functions' buffer reuse.

Each op's implementation is the eager op's: the Triton kernels where ``use_triton`` says so (on a
GPU, or on a CPU under Triton's interpreter), else the PyTorch reference (backward: autograd of
the reference). The kernels' host code (plans, caches, ``data_ptr`` checks) is not traceable, so
the kernels run inside the opaque op (``custom_op``), not through ``triton_op`` / ``wrap_triton``.

Under compile the ops are out of place: no gradient is written over an input (RMSNorm's
``in_place``, the gated ops' buffer reuse); the fused MLP's backward writes ``c = act(a) * b``
over its own intermediate ``dc``, a declared mutation. The fused linear cross-entropy computes
its gradients in the forward (for an upstream gradient of 1, as its exact mode keeps the weight
gradient from the forward on) and the backward scales them by the upstream gradient: a second
rounding in half precision unless that gradient is 1 (or a power of two); the token accuracy and
predicted tokens of both cross-entropies are outputs of their ops.
With ``reduction="none"`` the fused linear cross-entropy's backward op runs its token pass again
(the per-token upstream gradient is known only then): 2NHV flops more than eager.
"""

import contextlib
import math

import torch
from torch import Tensor

from liger_kernel.ops.cross_entropy import (
    CEOptions,
    check_ce_inputs,
    cross_entropy_core,
    cross_entropy_grad,
    cross_entropy_rows,
    label_stats,
)
from liger_kernel.ops.fused_linear_cross_entropy import (
    check_flce_inputs,
    fused_linear_cross_entropy_forward,
    make_options,
    resolve_mode,
)
from liger_kernel.ops.geglu import geglu_reference
from liger_kernel.ops.layer_norm import layer_norm_reference
from liger_kernel.ops.norms import CASTING_MODES, GEMMA, check_norm_inputs, kernel_backward, kernel_forward
from liger_kernel.ops.relu_squared import relu_squared_backward, relu_squared_forward
from liger_kernel.ops.rms_norm import casting_mode_name, rms_norm_reference
from liger_kernel.ops.rope import (
    _dense_strides,
    _layout_order,
    check_rope_shapes,
    check_rope_tensors,
    rope_launch,
    rope_reference,
)
from liger_kernel.ops.swiglu import (
    _check_mlp_inputs,
    _check_stacked,
    check_gated_inputs,
    check_multiplier,
    gated_backward,
    gated_forward,
    swiglu_reference,
)
from liger_kernel.ops.utils import check_float
from liger_kernel.utils import use_triton

# Dynamo reads it as True while it traces; eagerly a bare "return False" (~0.1 us; ``is_compiling()`` costs
# several times that). torch >= 2.3.
is_compiling = getattr(torch.compiler, "is_dynamo_compiling", lambda: False)
# torch.library.custom_op with register_autograd / register_fake: torch >= 2.4. Older torch keeps
# the eager path under compile too (one graph break per op).
ENABLED = all(hasattr(torch.library, name) for name in ("custom_op", "register_autograd", "register_fake"))
_TWINS: dict = {}  # op name: twin


class _Unregistered:
    """Stands in for a custom op where torch has no ``custom_op``: its registrations do nothing
    and ``apply_of`` never routes to it."""

    def __init__(self, fn):
        pass

    def register_fake(self, fn):
        return fn

    def register_autograd(self, backward, setup_context=None):
        pass


# Inductor keeps the stride order the inputs had when traced (some releases default to choosing
# it freely): RoPE lays its outputs out in its inputs' memory order, which the fake must predict.
_FIXED_STRIDE_ORDER = tuple(t for t in [getattr(torch.Tag, "needs_fixed_stride_order", None)] if t is not None)


def _custom_op(name: str, mutates_args=()):
    if not ENABLED:
        return _Unregistered
    return torch.library.custom_op(f"liger::{name}", mutates_args=mutates_args, tags=_FIXED_STRIDE_ORDER)


def apply_of(function, op: str):
    """``function.apply``, or, while Dynamo traces, the twin of ``function`` built on the custom op
    ``op`` (same arguments), where torch has custom ops. Named, not looked up by ``function``:
    Dynamo can neither hash nor compare the Function classes. Eager calls pay one
    ``is_compiling()`` check (~0.1 us)."""
    if is_compiling() and op in _TWINS:
        return _TWINS[op]
    return function.apply


def _kernels(t: Tensor) -> bool:
    return use_triton(t) and t.dtype != torch.float64


def _rows(X: Tensor) -> int:
    return math.prod(X.shape[:-1])


def _empty(like: Tensor) -> Tensor:
    """What an op returns in place of an output it does not compute (custom ops return tensors)."""
    return like.new_empty(0)


@contextlib.contextmanager
def _autograd_enabled():
    """Grad mode, with the autograd dispatch keys that a custom op's implementation runs without:
    the reference path differentiates the reference inside the op."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _reference_grads(reference, tensors, grad_outputs):
    """Gradients of ``reference(*tensors)`` (a tensor or a tuple) for ``grad_outputs`` (None
    skipped), one per tensor (None for a None or non-float tensor)."""
    with _autograd_enabled():
        leaves = [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t for t in tensors]
        outputs = reference(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o is not None and o.requires_grad]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return [next(found) if t is not None and t.requires_grad else None for t in leaves]


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


# ----------------------------------------------------------------------------- RMSNorm and LayerNorm


@_custom_op("rms_norm")
def rms_norm(X: Tensor, W: Tensor | None, eps: float, offset: float, casting_mode: str) -> tuple[Tensor, Tensor]:
    """``(Y, stats)``: Y contiguous in X's shape and dtype, stats the fp32 per-row 1/rms [1, rows]
    (zeros on the reference path)."""
    if not _kernels(X):
        return rms_norm_reference(X, W, eps, offset, casting_mode).contiguous(), _stats(X, 1).zero_()
    Y, _, stats, _ = kernel_forward(X, W, None, eps, offset, CASTING_MODES[casting_mode], is_rms=True)
    return Y, stats


def _stats(X: Tensor, n: int) -> Tensor:
    return X.new_empty((n, _rows(X)), dtype=torch.float32)


@rms_norm.register_fake
def _(X, W, eps, offset, casting_mode):
    return X.new_empty(X.shape), _stats(X, 1)


@_custom_op("rms_norm_backward")
def rms_norm_backward(
    dY: Tensor, X: Tensor, W: Tensor | None, stats: Tensor, eps: float, offset: float, casting_mode: str,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(dX, dW)``: dX contiguous in X's dtype; dW in W's dtype, empty unless ``need_dw``."""
    if not _kernels(X):
        dX, dW = _reference_grads(lambda x, w: rms_norm_reference(x, w, eps, offset, casting_mode), (X, W), (dY,))
        return _or_zeros(dX, X).contiguous(), _or_zeros(dW, W) if need_dw else _empty(X)
    dX, dW, _ = kernel_backward(
        dY, X, W, None, offset, CASTING_MODES[casting_mode], need_dw, False, False, RSTD=stats[0]
    )
    return dX, _empty(X) if dW is None else dW


@rms_norm_backward.register_fake
def _(dY, X, W, stats, eps, offset, casting_mode, need_dw):
    return dY.new_empty(dY.shape, dtype=X.dtype), W.new_empty(W.shape) if need_dw else _empty(X)


def _rms_norm_setup(ctx, inputs, output):
    X, W, eps, offset, casting_mode = inputs
    ctx.save_for_backward(X, W, output[1])
    ctx.settings = (eps, offset, casting_mode)
    ctx.mark_non_differentiable(output[1])


def _rms_norm_backward(ctx, dY, _):
    X, W, stats = ctx.saved_tensors
    need_dw = W is not None and ctx.needs_input_grad[1]
    dX, dW = rms_norm_backward(dY, X, W, stats, *ctx.settings, need_dw)
    return dX, dW if need_dw else None, None, None, None


rms_norm.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)


def _rms_norm_twin(
    X, W, eps, offset=0.0, casting_mode="llama", in_place=True, row_mode=None, grad_output_unshared=False
):
    """``LigerRMSNormFunction.apply`` under compile (``in_place`` and ``row_mode`` change nothing)."""
    check_norm_inputs(X, W)
    return rms_norm(X, W, float(eps), float(offset), casting_mode_name(casting_mode))[0]


@_custom_op("layer_norm")
def layer_norm(X: Tensor, W: Tensor | None, B: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """``(Y, stats)``: Y contiguous in X's shape and dtype, stats the fp32 per-row [mean, 1/std]."""
    if not _kernels(X):
        return layer_norm_reference(X, W, B, eps).contiguous(), _stats(X, 2).zero_()
    Y, _, stats, _ = kernel_forward(X, W, B, eps, 0.0, GEMMA, is_rms=False)
    return Y, stats


@layer_norm.register_fake
def _(X, W, B, eps):
    return X.new_empty(X.shape), _stats(X, 2)


@_custom_op("layer_norm_backward")
def layer_norm_backward(
    dY: Tensor, X: Tensor, W: Tensor | None, B: Tensor | None, stats: Tensor, eps: float, need_dw: bool,
    need_db: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(dX, dW, dB)``; dW / dB empty unless asked."""
    if not _kernels(X):
        dX, dW, dB = _reference_grads(lambda x, w, b: layer_norm_reference(x, w, b, eps), (X, W, B), (dY,))
        return (
            _or_zeros(dX, X).contiguous(),
            _or_zeros(dW, W) if need_dw else _empty(X),
            _or_zeros(dB, B) if need_db else _empty(X),
        )
    dX, dW, dB = kernel_backward(dY, X, W, B, 0.0, GEMMA, need_dw, need_db, False, Mean=stats[0], RSTD=stats[1])
    return dX, _empty(X) if dW is None else dW, _empty(X) if dB is None else dB


@layer_norm_backward.register_fake
def _(dY, X, W, B, stats, eps, need_dw, need_db):
    return (
        dY.new_empty(dY.shape, dtype=X.dtype),
        W.new_empty(W.shape) if need_dw else _empty(X),
        B.new_empty(B.shape) if need_db else _empty(X),
    )


def _layer_norm_setup(ctx, inputs, output):
    X, W, B, eps = inputs
    ctx.save_for_backward(X, W, B, output[1])
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1])


def _layer_norm_backward(ctx, dY, _):
    X, W, B, stats = ctx.saved_tensors
    need_dw = W is not None and ctx.needs_input_grad[1]
    need_db = B is not None and ctx.needs_input_grad[2]
    dX, dW, dB = layer_norm_backward(dY, X, W, B, stats, ctx.eps, need_dw, need_db)
    return dX, dW if need_dw else None, dB if need_db else None, None


layer_norm.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


def _layer_norm_twin(X, W, B, eps):
    check_norm_inputs(X, W, B)
    return layer_norm(X, W, B, float(eps))[0]


# ----------------------------------------------------------------------------- RoPE


def _rope_strides(x: Tensor, order=None) -> tuple:
    """The strides of a RoPE output (or input gradient) for ``x``: dense, in x's memory order
    (``order`` None) or the given one, as ``rope_launch`` lays them out."""
    return _dense_strides(x.shape, _layout_order(x.shape, x.stride()) if order is None else tuple(order))


def _rope(q, k, cos, sin, unsqueeze_dim, rotary_dim, inverse, orders):
    if use_triton(q):
        qo, ko, _ = rope_launch(q, k, cos, sin, unsqueeze_dim, rotary_dim, inverse, orders)
        return qo, ko

    def reference(q, k):
        return rope_reference(q, k, cos, sin, None, unsqueeze_dim, rotary_dim)

    results = _reference_grads(reference, (q, k), (q, k)) if inverse else reference(q, k)
    laid_out = []
    for x, r, order in zip((q, k), results, orders or (None, None)):
        out = x.new_empty_strided(x.shape, _rope_strides(x, order))
        laid_out.append(out.copy_(r))
    return tuple(laid_out)


@_custom_op("rope")
def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int, rotary_dim: int) -> tuple[Tensor, Tensor]:
    """RoPE of q and k, each output dense in its input's memory order."""
    return _rope(q, k, cos, sin, unsqueeze_dim, rotary_dim, False, None)


@rope.register_fake
def _(q, k, cos, sin, unsqueeze_dim, rotary_dim):
    return q.new_empty_strided(q.shape, _rope_strides(q)), k.new_empty_strided(k.shape, _rope_strides(k))


@_custom_op("rope_backward")
def rope_backward(
    dq: Tensor, dk: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int, rotary_dim: int, q_order: list[int],
    k_order: list[int],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients of q and k (the inverse rotation), dense in the memory orders of q and k."""
    return _rope(dq, dk, cos, sin, unsqueeze_dim, rotary_dim, True, (tuple(q_order), tuple(k_order)))


@rope_backward.register_fake
def _(dq, dk, cos, sin, unsqueeze_dim, rotary_dim, q_order, k_order):
    return dq.new_empty_strided(dq.shape, _rope_strides(dq, q_order)), dk.new_empty_strided(
        dk.shape, _rope_strides(dk, k_order)
    )


def _rope_setup(ctx, inputs, output):
    q, k, cos, sin, unsqueeze_dim, rotary_dim = inputs
    ctx.save_for_backward(cos, sin)
    ctx.settings = (unsqueeze_dim, rotary_dim)
    ctx.orders = [list(_layout_order(x.shape, x.stride())) for x in (q, k)]


def _rope_backward(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = rope_backward(_or_zeros(dq, cos), _or_zeros(dk, cos), cos, sin, *ctx.settings, *ctx.orders)
    return dq, dk, None, None, None, None


rope.register_autograd(_rope_backward, setup_context=_rope_setup)


def _rope_twin(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    check_rope_tensors(q, k, cos, sin)
    rotary_dim = check_rope_shapes(q.shape, k.shape, cos.shape, sin.shape, unsqueeze_dim, rotary_dim)
    return rope(q, k, cos.detach(), sin.detach(), unsqueeze_dim, rotary_dim)


# ----------------------------------------------------------------------------- SwiGLU, GeGLU, gated MLP, ReLU^2


def _gated_reference(activation, gate_multiplier, down_multiplier):
    if activation == "silu":
        return lambda a, b: swiglu_reference(a, b, gate_multiplier, down_multiplier)
    return lambda a, b: geglu_reference(a * gate_multiplier, b) * down_multiplier


@_custom_op("gated")
def gated(a: Tensor, b: Tensor, activation: str, gate_multiplier: float, down_multiplier: float) -> Tensor:
    """``down_multiplier * act(gate_multiplier * a) * b`` (``activation`` "silu" or "gelu_tanh"),
    contiguous."""
    if not use_triton(a):
        return _gated_reference(activation, gate_multiplier, down_multiplier)(a, b).contiguous()
    return gated_forward(a, b, activation, gate_multiplier, down_multiplier)


@gated.register_fake
def _(a, b, activation, gate_multiplier, down_multiplier):
    return a.new_empty(a.shape)


def _gated_backward(dc, a, b, activation, gate_multiplier, down_multiplier, store_c):
    if not use_triton(a):
        reference = _gated_reference(activation, gate_multiplier, down_multiplier)
        da, db = _reference_grads(reference, (a, b), (dc,))
        if store_c:
            dc.copy_(reference(a, b))
        return da.contiguous(), db.contiguous()
    target = dc if dc.is_contiguous() or not store_c else dc.contiguous()
    da, db = gated_backward(target, a, b, activation, None, None, store_c, gate_multiplier, down_multiplier)
    if target is not dc:
        dc.copy_(target)
    return da, db


@_custom_op("gated_backward")
def gated_backward_op(
    dc: Tensor, a: Tensor, b: Tensor, activation: str, gate_multiplier: float, down_multiplier: float
) -> tuple[Tensor, Tensor]:
    """``(da, db)``, contiguous."""
    return _gated_backward(dc, a, b, activation, gate_multiplier, down_multiplier, False)


@_custom_op("gated_backward_store_c", mutates_args=("dc",))
def gated_backward_store_c(
    dc: Tensor, a: Tensor, b: Tensor, activation: str, gate_multiplier: float, down_multiplier: float
) -> tuple[Tensor, Tensor]:
    """``(da, db)``, and ``c`` written over ``dc`` in the same pass (the fused MLP's backward)."""
    return _gated_backward(dc, a, b, activation, gate_multiplier, down_multiplier, True)


def _gated_grads_fake(dc, a, b, activation, gate_multiplier, down_multiplier):
    return a.new_empty(a.shape), b.new_empty(b.shape)


gated_backward_op.register_fake(_gated_grads_fake)
gated_backward_store_c.register_fake(_gated_grads_fake)


def _gated_setup(ctx, inputs, output):
    a, b, *settings = inputs
    ctx.save_for_backward(a, b)
    ctx.settings = settings


def _gated_backward_formula(ctx, dc):
    a, b = ctx.saved_tensors
    return *gated_backward_op(dc, a, b, *ctx.settings), None, None, None


gated.register_autograd(_gated_backward_formula, setup_context=_gated_setup)


def _silu_mul_twin(a, b, gate_multiplier=1.0, down_multiplier=1.0, in_place=None):
    check_gated_inputs(a, b)
    return gated(a, b, "silu", *_multipliers(gate_multiplier, down_multiplier))


def _multipliers(gate_multiplier, down_multiplier) -> tuple:
    return check_multiplier("gate_multiplier", gate_multiplier), check_multiplier("down_multiplier", down_multiplier)


def _gelu_mul_twin(a, b, in_place=None):
    check_gated_inputs(a, b)
    return gated(a, b, "gelu_tanh", 1.0, 1.0)


def _fused_gate_up_twin(y, in_place=False):
    _check_stacked(y)
    return gated(*y.chunk(2, dim=-1), "silu", 1.0, 1.0)


class CompiledGatedMLP(torch.autograd.Function):
    """``LigerGatedMLPFunction`` in a form Dynamo traces: the projections are matmuls Inductor sees,
    the activation the ``gated`` ops; it saves x, a and b, not ``c = act(a) * b``, which the
    backward recomputes over ``dc`` in the pass that gives da and db (one [tokens, I] tensor per
    layer less than saving it)."""

    @staticmethod
    def forward(ctx, x, gate_weight, up_weight, down_weight, activation, gate_multiplier, down_multiplier):
        x2 = x.reshape(-1, x.shape[-1])
        if up_weight is None:
            a, b = (x2 @ gate_weight.T).chunk(2, dim=-1)
        else:
            a, b = x2 @ gate_weight.T, x2 @ up_weight.T
        ctx.save_for_backward(x2, gate_weight, up_weight, down_weight, a, b)
        ctx.settings = (activation, gate_multiplier, down_multiplier)
        ctx.x_shape = x.shape
        c = gated(a, b, activation, gate_multiplier, down_multiplier).view(*x.shape[:-1], a.shape[-1])
        return c @ down_weight.T  # not a view (callers add in place: Llama 4's shared expert)

    @staticmethod
    def backward(ctx, dy):
        x2, gate_weight, up_weight, down_weight, a, b = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dc = dy2 @ down_weight
        da, db = gated_backward_store_c(dc, a, b, *ctx.settings)
        d_down = dy2.T @ dc  # dc now holds c
        if up_weight is None:
            dab = torch.cat((da, db), dim=-1)
            d_gate, d_up, dx = dab.T @ x2, None, dab @ gate_weight
        else:
            d_gate, d_up, dx = da.T @ x2, db.T @ x2, torch.addmm(da @ gate_weight, db, up_weight)
        return dx.view(ctx.x_shape), d_gate, d_up, d_down, None, None, None


def _gated_mlp_twin(
    x, gate_weight, up_weight, down_weight, activation="silu", gate_multiplier=1.0, down_multiplier=1.0
):
    _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation)
    weights = (gate_weight, up_weight, down_weight)
    return CompiledGatedMLP.apply(x, *weights, activation, *_multipliers(gate_multiplier, down_multiplier))


@_custom_op("relu_squared")
def relu_squared(X: Tensor) -> Tensor:
    """``relu(X) ** 2``, contiguous."""
    return relu_squared_forward(X).contiguous()


@relu_squared.register_fake
def _(X):
    return X.new_empty(X.shape)


@_custom_op("relu_squared_backward")
def relu_squared_backward_op(dY: Tensor, X: Tensor) -> Tensor:
    return relu_squared_backward(X, dY).contiguous()


@relu_squared_backward_op.register_fake
def _(dY, X):
    return X.new_empty(X.shape)


def _relu_squared_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _relu_squared_backward_formula(ctx, dY):
    return relu_squared_backward_op(dY, ctx.saved_tensors[0])


relu_squared.register_autograd(_relu_squared_backward_formula, setup_context=_relu_squared_setup)


def _relu_squared_twin(X):
    check_float("X", X)
    return relu_squared(X)


# ----------------------------------------------------------------------------- cross-entropy


@_custom_op("cross_entropy")
def cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, lse_square_scale: float,
    label_smoothing: float, reduction: str, softcap: float | None, return_z_loss: bool,
    return_token_accuracy: bool, return_predicted_tokens: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, z_loss, token_accuracy, predicted_tokens, per-row fp32 log-sum-exp (zeros on the
    reference path))``, each of the middle three empty unless asked; the logits are left intact."""
    opts = CEOptions(ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss,
                     return_token_accuracy, return_predicted_tokens)  # fmt: skip
    lse = logits.new_empty(_rows(logits), dtype=torch.float32)
    if not _kernels(logits):
        outputs = cross_entropy_core(logits, target, weight, opts, out_dtype=logits.dtype)
        lse.zero_()
    else:
        outputs, _ = cross_entropy_rows(logits.reshape(-1, logits.shape[-1]), target, weight, opts, lse=lse)
    return *(_empty(logits) if t is None else t for t in outputs), lse


@cross_entropy.register_fake
def _(logits, target, weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss,
      return_token_accuracy, return_predicted_tokens):  # fmt: skip
    shape = target.shape if reduction == "none" else ()
    return (
        logits.new_empty(shape),
        logits.new_empty(shape) if return_z_loss else _empty(logits),
        logits.new_empty((), dtype=torch.float32) if return_token_accuracy else _empty(logits),
        target.new_empty(target.shape) if return_predicted_tokens else _empty(logits),
        logits.new_empty(_rows(logits), dtype=torch.float32),
    )


@_custom_op("cross_entropy_backward")
def cross_entropy_backward(
    grad_loss: Tensor, logits: Tensor, target: Tensor, weight: Tensor | None, lse: Tensor, ignore_index: int,
    lse_square_scale: float, label_smoothing: float, reduction: str, softcap: float | None,
) -> Tensor:  # fmt: skip
    """d(loss)/d(logits) times ``grad_loss``, contiguous in the logits' shape and dtype."""
    opts = CEOptions(ignore_index, lse_square_scale, label_smoothing, reduction, softcap, False)
    if not _kernels(logits):

        def reference(x):
            return cross_entropy_core(x, target, weight, opts, out_dtype=logits.dtype)[0]

        return _reference_grads(reference, (logits,), (grad_loss,))[0].contiguous()
    x2 = logits.reshape(-1, logits.shape[-1])
    grad = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
    w, _, norm, wsum = label_stats(target.reshape(-1), weight, ignore_index, x2.shape[1])
    cross_entropy_grad(x2, grad, target, (w, norm, wsum), lse, grad_loss, opts)
    return grad.view(logits.shape)


@cross_entropy_backward.register_fake
def _(grad_loss, logits, target, weight, lse, *options):
    return logits.new_empty(logits.shape)


def _cross_entropy_setup(ctx, inputs, output):
    logits, target, weight, *options = inputs
    ctx.save_for_backward(logits, target, weight, output[4])
    ctx.options = options[:-3]  # not the requested outputs
    ctx.mark_non_differentiable(*output[1:])


def _cross_entropy_backward(ctx, grad_loss, *_):
    logits, target, weight, lse = ctx.saved_tensors
    grad = cross_entropy_backward(grad_loss, logits, target, weight, lse, *ctx.options)
    return grad, *([None] * 10)


cross_entropy.register_autograd(_cross_entropy_backward, setup_context=_cross_entropy_setup)


def _cross_entropy_twin(
    _input, target, weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction="mean",
    softcap=None, return_z_loss=False, return_token_accuracy=False, return_predicted_tokens=False,
):  # fmt: skip
    args = (_input, target, weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss)
    kept = (return_z_loss, bool(return_token_accuracy), bool(return_predicted_tokens))
    check_ce_inputs(_input, target, weight, CEOptions(*args[3:], *kept[1:]).check())
    lse_square_scale, label_smoothing = float(lse_square_scale), float(label_smoothing)
    softcap = None if softcap is None else float(softcap)
    loss, *extras, _ = cross_entropy(*args[:4], lse_square_scale, label_smoothing, reduction, softcap, *kept)
    return loss, *(t if keep else None for t, keep in zip(extras, kept))


# ----------------------------------------------------------------------------- fused linear cross-entropy


@_custom_op("fused_linear_cross_entropy")
def fused_linear_cross_entropy(
    input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, ce_weight: Tensor | None,
    ignore_index: int, lse_square_scale: float, label_smoothing: float, reduction: str, softcap: float | None,
    return_z_loss: bool, accum_dtype: torch.dtype | None, use_token_scaling: bool, ce_impl: str | None,
    ce_mode: str | None, chunk_mem_const: float, loss_dtype: torch.dtype | None, return_token_accuracy: bool,
    return_predicted_tokens: bool, need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, z_loss, token_accuracy, predicted_tokens, grad_input, grad_weight, grad_bias)``, the
    gradients for an upstream gradient of 1, each output empty unless asked; for ``reduction="none"``
    the gradients wait for the per-token upstream gradient (``fused_linear_cross_entropy_token_grads``)."""
    needs = (need_input, need_weight, need_bias) if reduction != "none" else (False, False, False)
    outputs = _flce_run(
        input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
        return_z_loss, accum_dtype, use_token_scaling, ce_impl, ce_mode, chunk_mem_const, loss_dtype, needs,
        predictions=(return_token_accuracy, return_predicted_tokens),
    )  # fmt: skip
    return tuple(_empty(input) if t is None else t for t in outputs)


def _flce_run(input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction,
              softcap, return_z_loss, accum_dtype, use_token_scaling, ce_impl, ce_mode, chunk_mem_const, loss_dtype,
              needs, token_grad=None, predictions=(False, False)):  # fmt: skip
    """``fused_linear_cross_entropy_forward``: ``(loss, z_loss, token_accuracy, predicted_tokens,
    grad_input, grad_weight, grad_bias)`` for an upstream gradient of 1 (``token_grad``: per token),
    ``predictions`` saying which of accuracy and predictions to return (else None), each gradient
    empty unless in ``needs``."""
    with _autograd_enabled():  # the reference path differentiates the reference
        loss, z_loss, accuracy, predicted, *grads = fused_linear_cross_entropy_forward(
            input, weight, target, ce_weight, bias, ignore_index, lse_square_scale, label_smoothing, reduction,
            softcap, return_z_loss, accum_dtype, use_token_scaling, *predictions, ce_impl, ce_mode, token_grad,
            compute_gradients=any(needs), weight_requires_grad=needs[1], chunk_mem_const=chunk_mem_const,
            loss_dtype=loss_dtype,
        )  # fmt: skip
    return loss, z_loss, accuracy, predicted, *(g if need else _empty(input) for g, need in zip(grads, needs))


@fused_linear_cross_entropy.register_fake
def _(input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
      return_z_loss, accum_dtype, use_token_scaling, ce_impl, ce_mode, chunk_mem_const, loss_dtype,
      return_token_accuracy, return_predicted_tokens, need_input, need_weight, need_bias):  # fmt: skip
    shape = target.shape if reduction == "none" else ()
    loss = input.new_empty(shape, dtype=loss_dtype or input.dtype)
    now = reduction != "none"
    return (
        loss,
        loss.new_empty(shape) if return_z_loss else _empty(input),
        input.new_empty((), dtype=torch.float32) if return_token_accuracy else _empty(input),
        target.new_empty(target.shape) if return_predicted_tokens else _empty(input),
        input.new_empty(input.shape) if now and need_input else _empty(input),
        weight.new_empty(weight.shape) if now and need_weight else _empty(input),
        bias.new_empty(bias.shape) if now and need_bias else _empty(input),
    )


@_custom_op("fused_linear_cross_entropy_token_grads")
def fused_linear_cross_entropy_token_grads(
    grad: Tensor, input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, ce_weight: Tensor | None,
    ignore_index: int, lse_square_scale: float, label_smoothing: float, softcap: float | None,
    accum_dtype: torch.dtype | None, use_token_scaling: bool, ce_impl: str | None, ce_mode: str | None,
    chunk_mem_const: float, need_input: bool, need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``reduction="none"``'s backward: ``(grad_input, grad_weight, grad_bias)`` for the per-token
    upstream gradient ``grad`` (the token pass again), each empty unless asked."""
    options = (ignore_index, lse_square_scale, label_smoothing, "none", softcap, False, accum_dtype)
    needs = (need_input, need_weight, need_bias)
    return tuple(
        _flce_run(input, weight, target, bias, ce_weight, *options, use_token_scaling, ce_impl, ce_mode,
                  chunk_mem_const, None, needs, grad)[4:]
    )  # fmt: skip


@fused_linear_cross_entropy_token_grads.register_fake
def _(grad, input, weight, target, bias, *rest):
    *_, need_input, need_weight, need_bias = rest
    return (
        input.new_empty(input.shape) if need_input else _empty(input),
        weight.new_empty(weight.shape) if need_weight else _empty(input),
        bias.new_empty(bias.shape) if need_bias else _empty(input),
    )


def _flce_setup(ctx, inputs, output):
    ctx.needs = inputs[-3:]
    ctx.per_token = inputs[8] == "none"
    if ctx.per_token:
        ctx.save_for_backward(*inputs[:5])
        ctx.options = (*inputs[5:8], *inputs[9:10], *inputs[11:16])
    else:
        ctx.save_for_backward(*output[4:])
    ctx.mark_non_differentiable(*output[1:])


def _flce_backward(ctx, grad_loss, *_):
    if ctx.per_token:
        grads = fused_linear_cross_entropy_token_grads(grad_loss, *ctx.saved_tensors, *ctx.options, *ctx.needs)
    else:
        grads = [g * grad_loss for g in ctx.saved_tensors]
    grads = [g if need else None for g, need in zip(grads, ctx.needs)]
    return grads[0], grads[1], None, grads[2], *([None] * 18)


fused_linear_cross_entropy.register_autograd(_flce_backward, setup_context=_flce_setup)


def _flce_twin(
    _input, weight, target, bias=None, ce_weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0,
    reduction="mean", softcap=None, return_z_loss=False, accum_dtype=None, use_token_scaling=False,
    return_token_accuracy=False, return_predicted_tokens=False, ce_impl=None, ce_mode=None, chunk_mem_const=1,
    loss_dtype=None,
):  # fmt: skip
    args = (
        _input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing, reduction, softcap,
        return_z_loss, accum_dtype, use_token_scaling,
    )  # fmt: skip
    check_flce_inputs(_input, weight, target, bias, ce_weight, accum_dtype)
    predictions = (bool(return_token_accuracy), bool(return_predicted_tokens))
    make_options(ignore_index, lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, accum_dtype,
                 use_token_scaling, *predictions)  # fmt: skip
    resolve_mode(ce_impl, ce_mode, accum_dtype, chunk_mem_const)
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t is not None and t.requires_grad for t in (_input, weight, bias)]
    numbers = (float(lse_square_scale), float(label_smoothing), reduction, None if softcap is None else float(softcap))
    loss, z_loss, accuracy, predicted, *_ = fused_linear_cross_entropy(
        *args[:6], *numbers, return_z_loss, accum_dtype, use_token_scaling, ce_impl, ce_mode, float(chunk_mem_const),
        loss_dtype, *predictions, *needs,
    )  # fmt: skip
    kept = (return_z_loss, *predictions)
    return loss, *(t if keep else None for t, keep in zip((z_loss, accuracy, predicted), kept))


if ENABLED:
    _TWINS.update(
        rms_norm=_rms_norm_twin,
        layer_norm=_layer_norm_twin,
        rope=_rope_twin,
        silu_mul=_silu_mul_twin,
        gelu_mul=_gelu_mul_twin,
        fused_gate_up_silu_mul=_fused_gate_up_twin,
        gated_mlp=_gated_mlp_twin,
        relu_squared=_relu_squared_twin,
        cross_entropy=_cross_entropy_twin,
        fused_linear_cross_entropy=_flce_twin,
    )

from liger_kernel.ops import library_layers  # noqa: E402, F401  (registers more ops and their twins)
