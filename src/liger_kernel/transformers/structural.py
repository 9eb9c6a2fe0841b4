"""Patch a decoder that no table entry names, by what its modules are.

``apply_liger_kernel(model)`` patches a model through its table entry when its
``config.model_type`` has one, and any other through ``apply_liger_kernel_by_structure``, which
looks for:

- RMSNorm-like modules: a leaf with a 1-D ``weight`` and a float ``variance_epsilon`` (or ``eps``).
  Its numerics (``offset`` 0 or 1, Llama's or Gemma's casting) are found by running the PyTorch
  spec of each against the module in bfloat16 and keeping the one that reproduces it.
- Gated MLPs: ``gate_proj``/``up_proj``/``down_proj`` (or one ``gate_up_proj``, gate half first)
  and one activation module that computes silu (SwiGLU) or tanh-GELU (GeGLU).
- The rotary function: ``apply_rotary_pos_emb`` of the modules' modeling files, where it is the
  rotate_half rotation (swapped in that module, as the table patch does).
- The lm_head + loss boundary of a ``*ForCausalLM`` with ``lm_head`` and ``model``: the generic
  forward (fused linear cross-entropy), or our cross-entropy as its loss function.

Nothing is swapped on structure alone. Each module candidate first runs against the original on
a copy with random weights and a small random input (rows of several magnitudes, down to where
``eps`` dominates): outputs and the gradients of the input and of every parameter, compared with
a float64 run of the original by the parity yardstick (at most ``FACTOR`` times the original's
own error in that dtype, plus a few units of the dtype's rounding). The rotary function is
checked the same way. The forward is checked on the model itself (one small batch in ``eval``
mode, gradients by ``autograd.grad`` so ``.grad`` is untouched) against the stock forward within
``FORWARD_TOLERANCE``: both run the same decoder, so they may differ only by the loss's rounding.
What fails stays stock, with the reason in the returned ``StructuralPatchReport`` (also logged at
INFO); ``report.revert()`` restores everything it swapped.
"""

import copy
import inspect
import logging
import math
import sys
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from liger_kernel.ops.rms_norm import rms_norm_reference
from liger_kernel.transformers.geglu import LigerGEGLUMLP
from liger_kernel.transformers.model.causal_lm import causal_lm_forward
from liger_kernel.transformers.model.loss_utils import liger_causal_lm_cross_entropy
from liger_kernel.transformers.monkey_patch import _MISSING, _convert, _set_or_delete, _swap
from liger_kernel.transformers.rms_norm import LigerRMSNorm
from liger_kernel.transformers.rope import liger_rotary_pos_emb
from liger_kernel.transformers.swiglu import LigerPhi3SwiGLUMLP, LigerSwiGLUMLP

logger = logging.getLogger(__name__)

# The parity yardstick (tests/parity.py): a floor of a few units of the dtype's rounding, relative
# to the largest reference magnitude, plus FACTOR times the original's own error.
FLOOR = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
FACTOR = 2.0
# The forward check has no float64 run (a float64 copy of a whole model is too big to make on the
# spot); the two forwards share the decoder and differ by the loss's rounding: 4 floors.
FORWARD_TOLERANCE = {dtype: 4 * floor for dtype, floor in FLOOR.items()}
# (offset, casting_mode) an RMSNorm may compute: Llama rounds x_hat before the weight, Gemma
# applies (offset + w) in fp32; Gemma stores w of (1 + w).
NORM_NUMERICS = ((0.0, "llama"), (0.0, "gemma"), (1.0, "gemma"), (1.0, "llama"))
# What our gated kernels compute, recognized by what the activation module does.
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}
# (projection layout, activation) -> our forward, and the flag that switches it.
MLP_FORWARDS = {
    ("gate_proj", "silu"): (LigerSwiGLUMLP.forward, "swiglu"),
    ("gate_proj", "gelu_tanh"): (LigerGEGLUMLP.forward, "geglu"),
    ("gate_up_proj", "silu"): (LigerPhi3SwiGLUMLP.forward, "swiglu"),
}
PROJECTIONS = {"gate_proj": ("gate_proj", "up_proj", "down_proj"), "gate_up_proj": ("gate_up_proj", "down_proj")}
FLAGS = {"rope": True, "cross_entropy": False, "fused_linear_cross_entropy": True, "rms_norm": True}
FLAGS |= {"swiglu": True, "geglu": True}
ROTARY_NAME = "apply_rotary_pos_emb"
# Probe shapes: batch, tokens; heads of q and k and the head width for the rotary function.
BATCH, TOKENS, Q_HEADS, K_HEADS, HEAD_DIM = 2, 5, 4, 2, 16
# (stock MLP class, our forward) -> the stock class with our forward, built once.
_MLP_ADAPTERS = {}


def _rotary_without_position_ids(q, k, cos, sin, unsqueeze_dim=1):
    """``liger_rotary_pos_emb`` under Hugging Face's current ``apply_rotary_pos_emb`` signature."""
    return liger_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


# The stock rotary signatures we can stand in for (parameter names), and the function that does.
ROTARY_SIGNATURES = {
    ("q", "k", "cos", "sin", "unsqueeze_dim"): _rotary_without_position_ids,
    ("q", "k", "cos", "sin", "position_ids", "unsqueeze_dim"): liger_rotary_pos_emb,
}


@dataclass
class StructuralPatchReport:
    """What ``apply_liger_kernel_by_structure`` did: ``patched`` and ``left`` hold
    ``"<path> (<class>): <what, or why not>"`` lines; ``revert()`` undoes every swap."""

    patched: list = field(default_factory=list)
    left: list = field(default_factory=list)
    _undo: list = field(default_factory=list, repr=False)

    def revert(self) -> None:
        for step in reversed(self._undo):
            step()
        self._undo.clear()

    def __str__(self) -> str:
        return "\n".join(["patched:", *self.patched, "left stock:", *self.left])


def _max_error(actual, reference) -> float:
    return (actual.detach().double() - reference.detach().double()).abs().max().item()


def _scale(tensor) -> float:
    return tensor.detach().double().abs().max().item() if tensor.numel() else 0.0


def _yardstick(ours, exact, stock, dtype):
    """None when every tensor of ``ours`` is as close to ``exact`` as the yardstick allows, else why not."""
    for name, reference in exact.items():
        if reference is None:
            continue
        if ours.get(name) is None or ours[name].shape != reference.shape:
            return f"{name}: missing or of another shape"
        bound = FLOOR[dtype] * _scale(reference) + FACTOR * _max_error(stock[name], reference)
        error = _max_error(ours[name], reference)
        if not error <= bound:  # NaN fails too
            return f"{name}: max error {error:.2e} > bound {bound:.2e} ({dtype})"
    return None


def _run(fn, params, inputs, dtype):
    """``fn(*inputs)``: its outputs and the gradients of its float inputs and of ``params`` (a
    name -> tensor dict) for a random output gradient, drawn in ``dtype`` whatever fn computes in."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(len(outputs))
    grads = [torch.randn(o.shape, generator=generator).to(dtype).to(o) for o in outputs]
    leaves = {f"grad of input {i}": t for i, t in enumerate(inputs) if t.requires_grad}
    leaves |= {f"grad of {name}": p for name, p in params.items()}
    results = torch.autograd.grad(outputs, list(leaves.values()), grads, allow_unused=True)
    return {f"output {i}": o for i, o in enumerate(outputs)} | dict(zip(leaves, results))


def _random_copy(module):
    """A copy of ``module`` whose float parameters are random (1-D ones around 1, matrices at
    1/sqrt(fan-in)) and trainable, so a stored zero or one hides no term."""
    probe = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            if p.is_floating_point():
                r = torch.randn(p.shape, generator=generator)
                p.copy_(1 + 0.5 * r if p.dim() == 1 else r / math.sqrt(p.shape[-1]))
                p.requires_grad_(True)
    return probe


def _module_check(stock, ours, inputs):
    """``ours`` against a float64 copy of ``stock`` (same parameters), by the yardstick of
    ``stock`` in the inputs' dtype; None when it passes, else why not."""
    dtype = inputs[0].dtype
    exact = copy.deepcopy(stock).double()

    def run(module, xs):
        return _run(module, dict(module.named_parameters()), xs, dtype)

    return _yardstick(run(ours, inputs), run(exact, [x.double() for x in inputs]), run(stock, inputs), dtype)


def _dtype_and_device(module):
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return (torch.float32, torch.device("cpu")) if p is None else (p.dtype, p.device)


def _plain_attributes(module):
    return tuple(
        (k, v)
        for k, v in sorted(vars(module).items())
        if not k.startswith("_") and k != "layer_idx" and isinstance(v, (bool, int, float, str, type(None)))
    )


def _probe_key(module):
    """What decides a module's math: the classes and plain attributes (eps, multipliers, an
    activation's options...; the layer index aside) of it and its submodules, and its parameters'
    shapes and dtypes. Modules alike share one check."""
    structure = tuple((path, type(m), _plain_attributes(m)) for path, m in module.named_modules())
    return structure, tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters())


def _checked(cache, module, check):
    """``check(module)`` once per ``_probe_key``; a probe that raises is a failed check."""
    key = _probe_key(module)
    if key not in cache:
        try:
            cache[key] = check(module)
        except Exception as error:  # a module that cannot run the probe stays stock, with the reason
            cache[key] = (None, f"the probe raised {type(error).__name__}: {error}")
    return cache[key]


# RMSNorm


def _ours(module) -> bool:
    """Already one of our modules (by this patch or the table's)."""
    return type(module).__module__.startswith("liger_kernel.")


def _norm_eps(module):
    """The epsilon of an RMSNorm-like leaf (1-D weight, float eps), else None."""
    weight = module._parameters.get("weight")
    if _ours(module) or next(module.children(), None) is not None:
        return None
    if weight is None or weight.dim() != 1:
        return None
    eps = next((vars(module)[n] for n in ("variance_epsilon", "eps") if n in vars(module)), None)
    return eps if isinstance(eps, float) else None


def _norm_input(size, eps, dtype, device):
    """[BATCH, TOKENS, size], each row at its own magnitude: from 0.1 sqrt(eps) (eps dominates)
    to 10."""
    generator = torch.Generator().manual_seed(1)
    magnitudes = torch.logspace(math.log10(math.sqrt(eps)) - 1, 1, BATCH * TOKENS).reshape(BATCH, TOKENS, 1)
    return (torch.randn(BATCH, TOKENS, size, generator=generator) * magnitudes).to(device, dtype)


def _check_norm(module):
    """The numerics our RMSNorm reproduces ``module`` with, verified; ``(numerics, None)`` or
    ``(None, why not)``."""
    eps, size = _norm_eps(module), module.weight.shape[0]
    dtype, device = _dtype_and_device(module)
    probe = _random_copy(module)
    half = copy.deepcopy(probe).to(torch.bfloat16)
    x = _norm_input(size, eps, torch.bfloat16, device)
    with torch.no_grad():
        expected = half(x).double()

        def distance(numerics):
            return (rms_norm_reference(x, half.weight, eps, *numerics).double() - expected).abs().mean().item()

        numerics = min(NORM_NUMERICS, key=distance)
    ours = copy.deepcopy(probe)
    _convert(ours, LigerRMSNorm, [], size, eps, *numerics)
    why = _module_check(probe, ours, [_norm_input(size, eps, dtype, device)])
    return (None, f"not our RMSNorm, {why}") if why else (numerics, None)


def _swap_norm(module, numerics, undo):
    _convert(module, LigerRMSNorm, undo, module.weight.shape[0], _norm_eps(module), *numerics)
    return f"LigerRMSNorm offset={numerics[0]} casting_mode={numerics[1]!r}", None


# Gated MLP


def _activation_name(act):
    """Which of our activations ``act`` computes (checked in float64 over [-6, 6]), else None."""
    t = torch.linspace(-6, 6, 97, dtype=torch.float64)
    try:
        y = act(t)
    except Exception:  # not an elementwise activation on a float64 tensor
        return None
    for name, fn in ACTIVATIONS.items():
        if isinstance(y, torch.Tensor) and y.shape == t.shape and torch.allclose(y, fn(t), rtol=1e-10, atol=1e-12):
            return name
    return None


def _mlp_layout(module):
    """``(layout, activation module)`` of a gated MLP, else None."""
    children = dict(module.named_children())
    layout = next((k for k, names in PROJECTIONS.items() if set(names) <= children.keys()), None)
    if layout is None:
        return None
    rest = [m for name, m in children.items() if name not in PROJECTIONS[layout]]
    return layout, rest[0] if len(rest) == 1 else None


def _mlp_adapter(cls, forward):
    """``cls`` with our forward: the stock class stays a base, so isinstance checks still hold."""
    key = (cls, forward)
    if key not in _MLP_ADAPTERS:
        _MLP_ADAPTERS[key] = type(f"Liger{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _MLP_ADAPTERS[key]


def _set_class(module, cls, undo):
    stock = type(module)
    module.__class__ = cls
    undo.append(lambda: setattr(module, "__class__", stock))


def _check_mlp(module):
    """Our forward for a gated MLP, verified: ``(forward, None)`` or ``(None, why not)``."""
    layout, act = _mlp_layout(module)
    name = None if act is None else _activation_name(act)
    if (layout, name) not in MLP_FORWARDS:
        return None, f"no kernel for its activation ({type(act).__name__}) with {layout}"
    forward, _ = MLP_FORWARDS[layout, name]
    dtype, device = _dtype_and_device(module)
    probe = _random_copy(module)
    first = getattr(probe, layout)
    width = getattr(first, "in_features", None) or first.weight.shape[1]
    x = torch.randn(BATCH, TOKENS, width, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    ours = copy.deepcopy(probe)
    _set_class(ours, _mlp_adapter(type(probe), forward), [])
    why = _module_check(probe, ours, [x])
    return (None, why) if why else (forward, None)


def _mlp_swapper(flags):
    def swap(module, forward, undo):
        flag = next(f for fwd, f in MLP_FORWARDS.values() if fwd is forward)
        if not flags[flag]:
            return None, f"{flag}=False"
        _set_class(module, _mlp_adapter(type(module), forward), undo)
        return f"{flag} kernel", None

    return swap


def _patch_modules(model, report, candidate, check, swap):
    """Each module ``candidate`` accepts (ours aside) is checked (``check``, once per kind), then
    ``swap(module, verdict, undo)`` returns what it did or why it did not."""
    checks = {}
    for path, module in list(model.named_modules()):
        if _ours(module) or not candidate(module):
            continue
        verdict, why = _checked(checks, module, check)
        done, why = (None, why) if why else swap(module, verdict, report._undo)
        label = f"{path} ({type(module).__name__})"
        if done:
            report.patched.append(f"{label}: {done}")
        else:
            report.left.append(f"{label}: {why}")


# Rotary embedding


def _rotary_inputs(dtype, device):
    """q, k [BATCH, heads, TOKENS, HEAD_DIM] and rotate_half cos, sin [BATCH, TOKENS, HEAD_DIM]."""
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(BATCH, Q_HEADS, TOKENS, HEAD_DIM, generator=generator)
    k = torch.randn(BATCH, K_HEADS, TOKENS, HEAD_DIM, generator=generator)
    positions = torch.randint(0, 4096, (BATCH, TOKENS, 1), generator=generator).double()
    inv_freq = 10000.0 ** -(torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    angles = torch.cat([positions * inv_freq] * 2, dim=-1)
    return [t.to(device, dtype) for t in (q, k, angles.cos(), angles.sin())]


def _check_rotary(stock_fn, dtype, device):
    """Our rotary function for ``stock_fn``, verified: ``(function, None)`` or ``(None, why not)``."""
    names = tuple(inspect.signature(stock_fn).parameters)
    ours_fn = ROTARY_SIGNATURES.get(names)
    if ours_fn is None:
        return None, f"its signature {names} is not one we stand in for"
    q, k, cos, sin = _rotary_inputs(dtype, device)

    def runner(fn, cos, sin):
        return lambda q, k: fn(q, k, cos, sin)

    exact = _run(runner(stock_fn, cos.double(), sin.double()), {}, [q.double(), k.double()], dtype)
    stock = _run(runner(stock_fn, cos, sin), {}, [q, k], dtype)
    ours = _run(runner(ours_fn, cos, sin), {}, [q, k], dtype)
    why = _yardstick(ours, exact, stock, dtype)
    return (None, why) if why else (ours_fn, None)


def _patch_rotary(model, report):
    dtype, device = _dtype_and_device(model)
    modules = {type(m).__module__ for m in model.modules()}
    for name in sorted(modules):
        modeling = sys.modules.get(name)
        stock_fn = getattr(modeling, ROTARY_NAME, None)
        if not callable(stock_fn) or stock_fn in ROTARY_SIGNATURES.values():
            continue
        label = f"{name}.{ROTARY_NAME}"
        try:
            ours_fn, why = _check_rotary(stock_fn, dtype, device)
        except Exception as error:  # a rotation that cannot take our probe stays stock
            ours_fn, why = None, f"the probe raised {type(error).__name__}: {error}"
        if why:
            report.left.append(f"{label}: not the rotate_half rotation, {why}")
            continue
        _swap(modeling, ROTARY_NAME, ours_fn, report._undo)
        report.patched.append(f"{label}: liger_rotary_pos_emb")


# The lm_head + loss boundary


def _causal_lms(model):
    """The standard ``*ForCausalLM`` modules of ``model``: a Linear ``lm_head`` on a ``model`` decoder."""
    for path, module in model.named_modules():
        if (
            type(module).__name__.endswith("ForCausalLM")
            and isinstance(getattr(module, "lm_head", None), nn.Linear)
            and isinstance(getattr(module, "model", None), nn.Module)
            and hasattr(getattr(module, "config", None), "vocab_size")
        ):
            yield path, module


def _loss_and_grads(lm, call, ids, labels):
    params = {name: p for name, p in lm.named_parameters() if p.requires_grad}
    loss = call(input_ids=ids, labels=labels).loss
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {"loss": loss} | {f"grad of {name}": g for name, g in zip(params, grads)}


def _check_forward(lm, patched_call):
    """``patched_call`` against the model's own forward on one random batch (eval mode): None
    when the loss and every gradient agree within ``FORWARD_TOLERANCE``, else why not."""
    dtype, device = _dtype_and_device(lm.lm_head)
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(0, lm.config.vocab_size, (BATCH, 2 * TOKENS), generator=generator).to(device)
    labels = ids.clone()
    labels[:, :TOKENS] = -100
    training = lm.training
    lm.eval()
    try:
        stock = _loss_and_grads(lm, lm, ids, labels)
        ours = _loss_and_grads(lm, patched_call, ids, labels)
    finally:
        lm.train(training)
    for name, expected in stock.items():
        if (expected is None) != (ours[name] is None):
            return f"{name}: present in one run only"
        if expected is None:
            continue
        error, bound = _max_error(ours[name], expected), FORWARD_TOLERANCE[dtype] * _scale(expected)
        if not error <= bound:
            return f"{name}: differs from the stock forward by {error:.2e} > {bound:.2e} ({dtype})"
    return None


def _set_attribute(module, name, value, undo):
    previous = vars(module).get(name, _MISSING)
    setattr(module, name, value)
    undo.append(lambda: _set_or_delete(module, name, previous))


def _loss_candidate(lm, fused):
    """``(attribute, value, description, call)``: what to set on ``lm`` and a call that runs it."""
    if fused:
        forward = types.MethodType(causal_lm_forward, lm)

        def call(**batch):
            return forward(**batch, skip_logits=True)

        return "forward", forward, "the generic forward (fused linear cross-entropy)", call

    def call(**batch):
        undo = []
        _set_attribute(lm, "_loss_function", liger_causal_lm_cross_entropy, undo)
        try:
            return lm(**batch)
        finally:
            undo.pop()()

    return "_loss_function", liger_causal_lm_cross_entropy, "Liger cross-entropy on the logits", call


def _patch_loss(model, report, fused):
    for path, lm in list(_causal_lms(model)):
        label = f"{path or 'model'} ({type(lm).__name__})"
        if getattr(vars(lm).get("forward"), "__func__", None) is causal_lm_forward or "_loss_function" in vars(lm):
            continue  # patched before
        name, value, what, call = _loss_candidate(lm, fused)
        try:
            why = _check_forward(lm, call)
        except Exception as error:  # a forward ours cannot run stays stock, with the reason
            why = f"the probe raised {type(error).__name__}: {error}"
        if why:
            report.left.append(f"{label}: {why}")
            continue
        _set_attribute(lm, name, value, report._undo)
        report.patched.append(f"{label}: {what}")


def apply_liger_kernel_by_structure(model, **kwargs) -> StructuralPatchReport:
    """Patch ``model`` in place by what its modules are (see the module docstring), each
    replacement verified against the original first. Flags as the table's functions:
    ``rope``, ``rms_norm``, ``swiglu``, ``geglu``, ``fused_linear_cross_entropy`` (default True)
    and ``cross_entropy`` (default False; not with the fused loss); other keywords are logged and
    ignored. Returns the report; ``report.revert()`` restores the stock model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the torch.nn.Module to patch in place, got {type(model).__name__}.")
    flags = FLAGS | {k: v for k, v in kwargs.items() if k in FLAGS}
    ignored = sorted(set(kwargs) - set(FLAGS) - {"model"})
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    if flags["cross_entropy"] and flags["fused_linear_cross_entropy"]:
        raise ValueError(
            "cross_entropy and fused_linear_cross_entropy cannot both be True: the fused linear "
            "cross-entropy already computes the loss without logits. Pass only one of them."
        )
    if ignored:
        logger.info("apply_liger_kernel_by_structure ignores %s", ignored)
    report = StructuralPatchReport()
    try:
        if flags["rms_norm"]:
            _patch_modules(model, report, lambda m: _norm_eps(m) is not None, _check_norm, _swap_norm)
        if flags["swiglu"] or flags["geglu"]:
            _patch_modules(model, report, lambda m: _mlp_layout(m) is not None, _check_mlp, _mlp_swapper(flags))
        if flags["rope"]:
            _patch_rotary(model, report)
        if flags["fused_linear_cross_entropy"] or flags["cross_entropy"]:
            _patch_loss(model, report, fused=bool(flags["fused_linear_cross_entropy"]))
    except BaseException:
        report.revert()
        raise
    logger.info("Liger kernels by structure on %s:\n%s", type(model).__name__, report)
    return report


def apply_liger_kernel(model, **kwargs):
    """Patch an already-built model in place: by its table entry when ``config.model_type`` has
    one (returns None), else by structure (returns the ``StructuralPatchReport``)."""
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    return _apply_liger_kernel_to_instance(model, **kwargs)
