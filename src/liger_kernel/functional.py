"""The functional API with a per-call implementation: each function takes keyword-only ``impl``
(``"triton"`` or ``"torch"``; None: the selection of ``liger_kernel.set_impl``), ``backend`` (the
same, by its older name) and ``mode`` (no op has modes: None only). Thin over
``liger_kernel.transformers.functional`` and the ops' Functions; no math here."""

import contextlib

from liger_kernel.ops.backends.registry import impl_for_call
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction
from liger_kernel.transformers import functional as _functional

__all__ = [
    "cross_entropy",
    "fused_linear_cross_entropy",
    "geglu",
    "layer_norm",
    "rms_norm",
    "rope",
    "swiglu",
    "fused_add_rms_norm",
]


def _implementation(impl, mode, backend):
    """The context an op runs in for these keyword arguments."""
    if mode is not None:
        raise ValueError(f"`mode` must be None: liger_kernel's ops have one mode each, got {mode!r}.")
    if impl is not None and backend is not None and impl != backend:
        raise ValueError(f"`impl`={impl!r} and `backend`={backend!r} disagree: pass one of them.")
    name = impl if impl is not None else backend
    return contextlib.nullcontext() if name is None else impl_for_call(name)


def _run(function, arguments: dict):
    """``function(**arguments)`` in the implementation that the arguments' ``impl``, ``mode`` and
    ``backend`` pick (``arguments``: the caller's ``locals()``)."""
    with _implementation(arguments.pop("impl"), arguments.pop("mode"), arguments.pop("backend")):
        return function(**arguments)


def cross_entropy(
    input,
    target,
    weight=None,
    ignore_index=-100,
    lse_square_scale=0.0,
    label_smoothing=0.0,
    reduction="mean",
    softcap=None,
    return_z_loss=False,
    return_token_accuracy=False,
    return_predicted_tokens=False,
    *,
    impl=None,
    mode=None,
    backend=None,
):
    """Cross-entropy of logits [BT, V] and labels [BT]: ``transformers.functional.liger_cross_entropy``."""
    return _run(_functional.liger_cross_entropy, locals())


def fused_linear_cross_entropy(
    _input,
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
    *,
    impl=None,
    mode=None,
    backend=None,
):
    """Cross-entropy of ``_input [BT, H] @ weight[V, H].T + bias`` without the logits:
    ``transformers.functional.liger_fused_linear_cross_entropy``."""
    arguments = locals()
    arguments["input"] = arguments.pop("_input")
    return _run(_functional.liger_fused_linear_cross_entropy, arguments)


def geglu(a, b, *, impl=None, mode=None, backend=None):
    """``gelu_tanh(a) * b`` for tensors of one shape."""
    with _implementation(impl, mode, backend):
        return _functional.liger_geglu(a, b)


def layer_norm(x, weight, bias=None, eps=1e-6, *, impl=None, mode=None, backend=None):
    """LayerNorm of x [..., H] with weight [H] and bias [H] (or None)."""
    with _implementation(impl, mode, backend):
        return _functional.liger_layer_norm(x, weight, bias, eps)


def rms_norm(
    x,
    weight,
    eps=1e-6,
    *,
    offset=0.0,
    casting_mode="llama",
    in_place=False,
    row_mode=None,
    impl=None,
    mode=None,
    backend=None,
):
    """RMSNorm of x [..., H] with weight [H] (or None); ``casting_mode`` "llama", "gemma" or "none"."""
    with _implementation(impl, mode, backend):
        return LigerRMSNormFunction.apply(x, weight, eps, offset, casting_mode, in_place, row_mode)


def rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, *, impl=None, mode=None, backend=None):
    """RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] in HF's rotate_half layout; ``(q_embed, k_embed)``."""
    with _implementation(impl, mode, backend):
        return _functional.liger_rope(q, k, cos, sin, position_ids, unsqueeze_dim)


def swiglu(a, b, gate_multiplier=1.0, down_multiplier=1.0, *, impl=None, mode=None, backend=None):
    """``silu(a) * b`` for tensors of one shape, with Falcon-H1's multipliers as
    ``LigerSiLUMulFunction`` applies them (1.0: plain SwiGLU)."""
    with _implementation(impl, mode, backend):
        return LigerSiLUMulFunction.apply(a, b, gate_multiplier, down_multiplier)


def fused_add_rms_norm(
    X, R, W, eps=1e-6, offset=0.0, casting_mode="llama", in_place=False, *, impl=None, mode=None, backend=None
):
    """``(Y, S)``: ``S = X + R`` and its RMSNorm, one pass (``liger_fused_add_rms_norm``)."""
    with _implementation(impl, mode, backend):
        return _functional.liger_fused_add_rms_norm(X, R, W, eps, offset, casting_mode, in_place)
