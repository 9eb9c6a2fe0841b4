"""One-line Hugging Face patching, generated from the table in ``model_specs``.

``apply_liger_kernel_to_<model>()`` swaps the family's RMSNorm and MLP classes and its RoPE
function in ``transformers.models.<m>.modeling_<m>`` (models built afterwards use our kernels)
and gives the causal-LM class the generic forward, whose loss is the fused linear
cross-entropy. With ``model=`` it also converts that model's norm and MLP modules in place,
keeping their parameters. ``revert_liger_kernel_to_<model>()`` undoes both. Every swapped
symbol's original is kept in ``_ORIGINALS``, the one place a revert reads from.

A patch is all or nothing: the arguments are checked before anything changes, and a step that
fails undoes the steps before it, so a failed call leaves the modeling module and the model as
they were.
"""

import contextlib
import functools
import importlib
import inspect
import logging
import textwrap
import types

import torch
import torch.nn as nn

from liger_kernel.transformers import rope as rope_functions
from liger_kernel.transformers.geglu import LigerGEGLUMLP, LigerGEGLUMLPForGemma4
from liger_kernel.transformers.layer_norm import LigerLayerNorm
from liger_kernel.transformers.model.causal_lm import causal_lm_forward, lce_forward_for_multimodal
from liger_kernel.transformers.model.loss_utils import liger_causal_lm_cross_entropy
from liger_kernel.transformers.model_specs import (
    ALIASES,
    DEEPSEEK_V2_SWIGLU,
    FALCON_H1_SWIGLU,
    GEGLU,
    GEMMA4_GEGLU,
    GPT_OSS_EXPERTS,
    HUNYUAN_SWIGLU,
    MODEL_SPECS,
    PHI3,
    RELU2,
    SILU_EXPERTS,
    SWIGLU,
    TILEABLE_MLPS,
)
from liger_kernel.transformers.relu_squared import LigerReLUSquared
from liger_kernel.transformers.rms_norm import LigerRMSNorm
from liger_kernel.transformers.swiglu import (
    SILU_NAMES,
    LigerFalconH1SwiGLUMLP,
    LigerHunyuanV1SwiGLUMLP,
    LigerPhi3SwiGLUMLP,
    LigerSwiGLUMLP,
)
from liger_kernel.transformers.tiled_mlp import tiled

logger = logging.getLogger(__name__)


class _LigerDeepseekV2SwiGLUMLP(LigerSwiGLUMLP):
    """``LigerSwiGLUMLP`` under DeepSeek-V2's constructor ``(config, hidden_size=None,
    intermediate_size=None)``; every DeepSeek-V2 MLP is ``config.hidden_size`` wide."""

    def __init__(self, config, hidden_size=None, intermediate_size=None):
        if hidden_size not in (None, config.hidden_size):
            raise ValueError(
                f"hidden_size must be None or config.hidden_size ({config.hidden_size}), got {hidden_size}: "
                "the Liger DeepSeek-V2 MLP is as wide as the model."
            )
        super().__init__(config, intermediate_size)


# (owner, attribute name) -> the owner's own value before the first patch (_MISSING: it had none).
_ORIGINALS = {}
_MISSING = object()
# (modeling module, stock class name) -> its Liger adapter class, built once so identity is stable.
_ADAPTERS = {}

_MLP_BASES = {
    SWIGLU: LigerSwiGLUMLP,
    PHI3: LigerPhi3SwiGLUMLP,
    GEGLU: LigerGEGLUMLP,
    GEMMA4_GEGLU: LigerGEGLUMLPForGemma4,
    HUNYUAN_SWIGLU: LigerHunyuanV1SwiGLUMLP,
    FALCON_H1_SWIGLU: LigerFalconH1SwiGLUMLP,
    DEEPSEEK_V2_SWIGLU: _LigerDeepseekV2SwiGLUMLP,
}
# MLP kinds whose constructor takes the width as ``intermediate_size`` (shared experts are narrower).
_SIZED_MLPS = (SWIGLU, DEEPSEEK_V2_SWIGLU)
# Experts kind -> (module, class) of the fused experts module computing it, built as (config) with the
# stock parameters; resolved when an entry sets ``fused_experts``. DeepSeek-V4's clamped kind has none.
_FUSED_EXPERTS = {
    kind: ("liger_kernel.transformers.swiglu", "LigerExperts") for kind in (SILU_EXPERTS, GPT_OSS_EXPERTS)
}
_EXPERTS_ACTIVATIONS = {SILU_EXPERTS: SILU_NAMES, GPT_OSS_EXPERTS: SILU_NAMES}
# What each fused kernel computes: silu, or GELU's tanh form (HF's "gelu_pytorch_tanh"/"gelu_new").
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")
_MLP_ACTIVATIONS = {kind: SILU_NAMES for kind in _MLP_BASES} | {GEGLU: _TANH_GELU, GEMMA4_GEGLU: _TANH_GELU}
# Plain attributes of every nn.Module: never copied when converting a module in place.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _set_or_delete(owner, name, value):
    if value is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, value)


@contextlib.contextmanager
def _all_or_nothing():
    """Yields a list for undo steps; if the block raises, they run newest first and the error
    propagates."""
    undo = []
    try:
        yield undo
    except BaseException:
        for step in reversed(undo):
            step()
        raise


def _swap(owner, name, value, undo):
    """Set ``owner.name = value``, remembering the owner's own original the first time."""
    key, previous = (owner, name), vars(owner).get(name, _MISSING)
    first = key not in _ORIGINALS
    _ORIGINALS.setdefault(key, previous)
    setattr(owner, name, value)

    def back():
        _set_or_delete(owner, name, previous)
        if first:
            del _ORIGINALS[key]

    undo.append(back)


def _original(owner, name):
    """``owner.name`` as it was before any patch."""
    return _ORIGINALS[(owner, name)] if (owner, name) in _ORIGINALS else getattr(owner, name)


def _restore(owners):
    for owner, name in [key for key in _ORIGINALS if key[0] in owners]:
        _set_or_delete(owner, name, _ORIGINALS.pop((owner, name)))


def _mlp_supported(spec, config) -> bool:
    """Our MLP modules have bias-free projections and one fixed activation."""
    return (
        not getattr(config, "mlp_bias", False)
        and getattr(config, spec.activation, None) in _MLP_ACTIVATIONS[spec.mlp_kind]
    )


def _norm_adapter(spec, modeling, name):
    """``LigerRMSNorm`` with the family's numerics and the stock constructor ``(size, eps,
    with_scale=True)`` (Gemma 3 and 4 pass the size as ``dim=``; Gemma 4's ``with_scale=False``
    has no weight). Its name keeps "RMSNorm", which Hugging Face's weight init keys on (ones, or
    zeros for Gemma)."""
    key = (modeling.__name__, name)
    if key not in _ADAPTERS:
        numerics = spec.norm

        def __init__(self, hidden_size=None, eps=1e-6, with_scale=True, *, dim=None):
            LigerRMSNorm.__init__(
                self,
                hidden_size if hidden_size is not None else dim,
                eps,
                offset=numerics.offset,
                casting_mode=numerics.casting_mode,
                init_fn=numerics.init_fn,
                elementwise_affine=with_scale,
                grad_output_unshared=numerics.in_place,
            )

        _ADAPTERS[key] = type(
            f"Liger{name}",
            (LigerRMSNorm,),
            {"__init__": __init__, "__module__": __name__, "stock_class": _original(modeling, name)},
        )
    return _ADAPTERS[key]


def _experts_supported(spec, config) -> bool:
    """The fused experts compute one fixed activation."""
    return getattr(config, "hidden_act", None) in _EXPERTS_ACTIVATIONS[spec.experts_kind]


def _config_adapter(spec, modeling, name, base, supported, what, prefix=""):
    """``base`` under the stock constructor ``(config, ...)`` of ``name``, cached and named as
    ``prefix + name``. A config it cannot reproduce (``supported`` says no) gets the stock module
    instead, so patching never changes a model's math."""
    key = (modeling.__name__, prefix + name)
    if key not in _ADAPTERS:

        def __new__(cls, config=None, *args, **kwargs):
            # copy.deepcopy and pickle call __new__(cls) alone, to fill in an existing module's state.
            if config is not None and not supported(spec, config):
                logger.warning("%s kept stock: Liger's %s cannot reproduce this config.", name, what)
                return cls.stock_class(config, *args, **kwargs)
            return nn.Module.__new__(cls)

        _ADAPTERS[key] = type(
            f"Liger{prefix}{name}",
            (base,),
            {"__new__": __new__, "__module__": __name__, "stock_class": _original(modeling, name)},
        )
    return _ADAPTERS[key]


def _mlp_adapter(spec, modeling, name, tiled_mlp=False):
    """The family's Liger MLP under the stock constructor, in token shards with ``tiled_mlp``
    (biased projections or another activation keep the stock MLP)."""
    base, what = _MLP_BASES[spec.mlp_kind], f"{spec.mlp_kind} MLP"
    if tiled_mlp:
        base = tiled(base)
    return _config_adapter(spec, modeling, name, base, _mlp_supported, what, "Tiled" if tiled_mlp else "")


def _experts_adapter(spec, modeling, name):
    """The fused experts module of the family's ``experts_kind`` under the stock ``(config)``
    constructor (another activation keeps the stock experts)."""
    module, class_name = _FUSED_EXPERTS[spec.experts_kind]
    base = getattr(importlib.import_module(module), class_name)
    return _config_adapter(spec, modeling, name, base, _experts_supported, f"fused {spec.experts_kind}")


def _activation_adapter(modeling):
    """``LigerReLUSquared`` standing in for Hugging Face's ``ReLUSquaredActivation``."""
    key = (modeling.__name__, "relu2")
    if key not in _ADAPTERS:
        stock = _original(modeling, "ACT2FN")["relu2"].__class__
        _ADAPTERS[key] = type(
            "LigerReLUSquaredActivation", (LigerReLUSquared,), {"__module__": __name__, "stock_class": stock}
        )
    return _ADAPTERS[key]


def _activations_with_relu_squared(modeling):
    """The modeling module's ``ACT2FN`` with ``"relu2"`` built as ``LigerReLUSquared``."""
    from transformers.activations import ACT2CLS, ClassInstantier

    return ClassInstantier({**ACT2CLS, "relu2": _activation_adapter(modeling)})


def _layer_norm_supported(normalized_shape, elementwise_affine=True, bias=True) -> bool:
    """``LigerLayerNorm`` normalizes the last dimension with a weight and a bias."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return len(shape) == 1 and bool(elementwise_affine) and bool(bias)


def _layer_norm_adapter():
    """``LigerLayerNorm`` under ``nn.LayerNorm``'s constructor, and an ``nn.LayerNorm`` too, so
    what keys on that class (Hugging Face's weight init, the Trainer's no-weight-decay list) still
    sees one. A LayerNorm it cannot reproduce (no bias or weight, several dimensions) stays stock."""
    key = ("torch.nn", "LayerNorm")
    if key not in _ADAPTERS:

        def __new__(cls, normalized_shape=None, eps=1e-5, elementwise_affine=True, bias=True, *args, **kwargs):
            if normalized_shape is not None and not _layer_norm_supported(normalized_shape, elementwise_affine, bias):
                return nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias, *args, **kwargs)
            return nn.Module.__new__(cls)

        def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
            nn.LayerNorm.__init__(self, normalized_shape, eps, elementwise_affine, bias, device, dtype)
            self.impl, self.mode, self.hidden_size = None, None, self.normalized_shape[0]

        _ADAPTERS[key] = type(
            "LigerLayerNorm",
            (LigerLayerNorm, nn.LayerNorm),
            {"__new__": __new__, "__init__": __init__, "__module__": __name__, "stock_class": nn.LayerNorm},
        )
    return _ADAPTERS[key]


def _nn_with_layer_norm(modeling):
    """A stand-in for a modeling module's ``nn`` (``from torch import nn``) whose ``LayerNorm`` is
    ours: everything else is ``torch.nn``'s."""
    proxy = types.ModuleType(f"{modeling.__name__}.nn")
    proxy.__getattr__ = lambda name: getattr(nn, name)
    proxy.LayerNorm = _layer_norm_adapter()
    return proxy


def _convert(module, adapter, undo, *args, **kwargs):
    """Turn ``module`` into an ``adapter`` in place: same object, same Parameters and hooks.
    A meta-device instance supplies the plain attributes the Liger forward reads that the stock
    module lacks (those it has describe the same module: its config, its width)."""
    with torch.device("meta"):
        fresh = adapter(*args, **kwargs)
    new = {key: value for key, value in vars(fresh).items() if key not in _MODULE_INTERNALS and key not in vars(module)}
    previous, cls = {key: vars(module).get(key, _MISSING) for key in new}, type(module)
    # A parameter slot the Liger forward reads as None (a norm without weight) that the stock module lacks.
    empty = [name for name, p in fresh._parameters.items() if p is None and name not in module._parameters]
    for key, value in new.items():
        setattr(module, key, value)
    for name in empty:
        module.register_parameter(name, None)
    module.__class__ = adapter

    def back():
        module.__class__ = cls
        for key, value in previous.items():
            _set_or_delete(module, key, value)
        for name in empty:
            del module._parameters[name]

    undo.append(back)


def _patch_instance(model, spec, modeling, rms_norm, mlp, layer_norm, undo, tiled_mlp=False):
    """Convert the model's stock norms and MLPs (or activations; in token shards with
    ``tiled_mlp``), and with ``layer_norm`` the ``nn.LayerNorm`` children of this module's classes;
    returns counts and the reasons for what was left."""
    norms = {_original(modeling, n): n for n in spec.norms if hasattr(modeling, n)} if rms_norm else {}
    mlps = {_original(modeling, n): n for n in spec.mlps if hasattr(modeling, n)} if mlp else {}
    fused = mlp and spec.fused_experts
    experts = {_original(modeling, n): n for n in spec.experts if hasattr(modeling, n)} if fused else {}
    # The experts' config (a multimodal model's text config).
    config = model.config.get_text_config() if experts else None
    activation = _activation_adapter(modeling) if mlp and spec.mlp_kind == RELU2 else None
    owners = modeling.__name__ if layer_norm and spec.layer_norm else None
    done = {"rms_norm": 0, "mlp": 0, "layer_norm": 0, "experts": 0}
    kept = []
    for path, module in model.named_modules():
        cls = type(module)
        if owners is not None and cls.__module__ == owners:
            for child in module.children():
                if type(child) is nn.LayerNorm and _layer_norm_supported(
                    child.normalized_shape, child.elementwise_affine, child.bias is not None
                ):
                    _convert(child, _layer_norm_adapter(), undo, child.normalized_shape, child.eps)
                    done["layer_norm"] += 1
        if cls in norms:
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            weight = getattr(module, "weight", None)
            size = None if weight is None else weight.shape[0]
            _convert(module, _norm_adapter(spec, modeling, norms[cls]), undo, size, eps, weight is not None)
            done["rms_norm"] += 1
        elif activation is not None and cls is activation.stock_class:
            _convert(module, activation, undo)
            done["mlp"] += 1
        elif cls in mlps:
            if not _mlp_supported(spec, module.config):
                kept.append(f"{path} ({cls.__name__}: config not reproducible by the {spec.mlp_kind} kernel)")
                continue
            width = {"intermediate_size": module.down_proj.in_features} if spec.mlp_kind in _SIZED_MLPS else {}
            _convert(module, _mlp_adapter(spec, modeling, mlps[cls], tiled_mlp), undo, module.config, **width)
            done["mlp"] += 1
        elif cls in experts:
            if not _experts_supported(spec, config):
                kept.append(f"{path} ({cls.__name__}: config not reproducible by the fused {spec.experts_kind})")
                continue
            _convert(module, _experts_adapter(spec, modeling, experts[cls]), undo, config)
            done["experts"] += 1
    return done, kept


def _check_arguments(flags, model):
    """Every flag a bool (None counts as off: integrators pass their unset options), ``model`` a
    module or None, and at most one of the two losses: checked before anything is patched."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be the torch.nn.Module to patch in place (a Hugging Face model or a PEFT wrapper) "
            f"or None, got {type(model).__name__}. Pass model=<your model>, or no model to patch the classes only."
        )
    if flags.get("cross_entropy") and flags.get("fused_linear_cross_entropy"):
        raise ValueError(
            "cross_entropy and fused_linear_cross_entropy cannot both be True: the fused linear "
            "cross-entropy already computes the loss without logits. Pass only one of them."
        )
    mlp_flag = next((name for name in ("swiglu", "geglu") if name in flags), None)
    if flags.get("tiled_mlp") and not flags.get(mlp_flag):
        raise ValueError(
            f"tiled_mlp=True runs the Liger MLP in token shards, but {mlp_flag}={flags.get(mlp_flag)} leaves the "
            f"MLP stock. Pass {mlp_flag}=True with it, or tiled_mlp=False."
        )


def _decoder_keys(spec, model):
    """The table keys of the decoders (and encoders) a family patches along: its ``decoders``, and
    with ``by_config`` those its model's ``text_config`` / ``vision_config`` types name."""
    keys = list(spec.decoders)
    config = getattr(model, "config", None) if spec.by_config else None
    for sub in ("text_config", "vision_config"):
        model_type = getattr(getattr(config, sub, None), "model_type", None)
        key = ALIASES.get(model_type, model_type)
        if key in MODEL_SPECS and key not in keys:
            keys.append(key)
    return keys


def _decoder_flags(key, flags, others):
    """A decoder's own switches: the family's (and its ``**kwargs``) where they name one, else the
    decoder's defaults; never its losses (the family's forward owns the loss)."""
    given = {**others, **flags}
    spec = MODEL_SPECS[key]
    own = {name: given.get(name, default) for name, default in (*spec.flags, *spec.extra_flags) if name != "model"}
    return own | {"cross_entropy": False, "fused_linear_cross_entropy": False}


def _tiled_mlp(part, flags) -> bool:
    """Whether this part's MLPs run in token shards: ``tiled_mlp`` asked, and a kind that has them."""
    return bool(flags.get("tiled_mlp")) and part.mlp_kind in TILEABLE_MLPS


def _patch_classes(part, modeling, flags, undo):
    """Swap one part's symbols in its modeling module (those this transformers has: older ones
    lack some of a family's classes, which are listed and skipped)."""
    missing = []

    def present(name):
        if not hasattr(modeling, name):
            missing.append(name)
        return hasattr(modeling, name)

    swapped = {}
    if flags.get("rope") and part.rope is not None and present(part.rope):
        _swap(modeling, part.rope, getattr(rope_functions, part.rope_fn), undo)
    if flags.get("rms_norm"):
        for name in filter(present, part.norms):
            swapped[_original(modeling, name)] = _norm_adapter(part, modeling, name)
            _swap(modeling, name, swapped[_original(modeling, name)], undo)
    if flags.get(part.mlp_flag):
        for name in filter(present, part.mlps):
            _swap(modeling, name, _mlp_adapter(part, modeling, name, _tiled_mlp(part, flags)), undo)
        if part.mlp_kind == RELU2:
            _swap(modeling, "ACT2FN", _activations_with_relu_squared(modeling), undo)
        if part.fused_experts:
            for name in filter(present, part.experts):
                _swap(modeling, name, _experts_adapter(part, modeling, name), undo)
    if flags.get("layer_norm") and part.layer_norm is not None:
        swapped[nn.LayerNorm] = _layer_norm_adapter()
        if part.layer_norm == "nn.LayerNorm":
            _swap(modeling, "nn", _nn_with_layer_norm(modeling), undo)
        elif present(part.layer_norm):
            _swap(modeling, part.layer_norm, swapped[nn.LayerNorm], undo)
    if part.norm_registry is not None and swapped and present(part.norm_registry):
        registry = _original(modeling, part.norm_registry)
        _swap(modeling, part.norm_registry, {key: swapped.get(cls, cls) for key, cls in registry.items()}, undo)
    for class_name, forward in ((part.causal_lm, causal_lm_forward), (part.multimodal, lce_forward_for_multimodal)):
        if class_name is None or not present(class_name):
            continue
        owner = getattr(modeling, class_name)
        post_init = _original(owner, "post_init")  # the class's own, or (_MISSING) the inherited one
        post_init = super(owner, owner).post_init if post_init is _MISSING else post_init
        _swap(owner, "post_init", _post_init_installing_capture(post_init), undo)
        if flags.get("cross_entropy"):
            # PreTrainedModel.loss_function returns `_loss_function` when the model has one: a class
            # attribute hooks this family only, leaving transformers' shared loss functions alone.
            _swap(owner, "_loss_function", staticmethod(liger_causal_lm_cross_entropy), undo)
        if flags.get("fused_linear_cross_entropy"):
            _swap(owner, "forward", forward, undo)
    if missing:
        logger.warning("Not in this transformers' %s, left out: %s", modeling.__name__, missing)


def _patch_family(spec, model, flags, others, undo):
    """Patch the family's parts (its decoder, its towers) and the decoders it carries; convert
    ``model`` in place. Returns what was converted and what was left, for the log."""
    done, kept = {}, []
    for part in (spec, *spec.towers):
        modeling = importlib.import_module(part.module)
        _patch_classes(part, modeling, flags, undo)
        if model is not None:
            rms_norm, mlp, layer_norm = flags.get("rms_norm"), flags.get(part.mlp_flag), flags.get("layer_norm")
            tiled_mlp = _tiled_mlp(part, flags)
            counts, left = _patch_instance(model, part, modeling, rms_norm, mlp, layer_norm, undo, tiled_mlp)
            done = {key: done.get(key, 0) + counts[key] for key in counts}
            kept += left
    for key in _decoder_keys(spec, model):
        counts, left = _patch_family(MODEL_SPECS[key], model, _decoder_flags(key, flags, others), {}, undo)
        done = {name: done.get(name, 0) + counts.get(name, 0) for name in done | counts}
        kept += left
    return done, kept


def _apply(model_type, model, flags, others):
    """``flags``: the family's switches by name (``spec.flags``); ``others``: the keywords a
    ``**kwargs`` signature took (they reach the decoders a family carries, else patch nothing)."""
    spec = MODEL_SPECS[model_type]
    _check_arguments(flags, model)
    if others:
        logger.info("apply_liger_kernel_to_%s passes %s to its decoders only", model_type, sorted(others))
    if flags.get("rope") and spec.rope is None and not spec.decoders:
        logger.info("rope=True ignored for %s: our RoPE kernel does not compute its rotation.", model_type)
    with _all_or_nothing() as undo:
        done, kept = _patch_family(spec, model, flags, others, undo)
    if model is not None:
        _install_output_capturing(model)
        logger.info("Liger kernels on the %s instance: %s; left stock: %s", model_type, done, kept or "nothing")


def _post_init_installing_capture(post_init):
    """``post_init`` (the end of every transformers model's ``__init__``), then
    ``_install_output_capturing``: a model built after the class patch compiles as one patched on
    the instance does."""

    @functools.wraps(post_init)
    def wrapper(self, *args, **kwargs):
        result = post_init(self, *args, **kwargs)
        _install_output_capturing(self)
        return result

    return wrapper


def _install_output_capturing(model):
    """Install transformers' output-capturing hooks (5.x: router logits, hidden states) now on each
    sub-model whose config asks it to record an output, and on a vision tower whose caller asks for
    its hidden states (LLaVA's and InternVL's: ``vision_feature_layer``). The stock forward
    installs them on its first such call, under a ``threading.Lock`` that Dynamo cannot enter: a
    graph break in the first compiled step (an error under ``fullgraph=True``) of every MoE model
    trained with its balancing loss, and of LLaVA and InternVL. The hooks record only while a
    forward asks for the output, on module classes (routers, layers) that adapters such as PEFT's
    LoRA keep; a revert leaves them, as one stock forward would. Like a stock model after its first
    forward, such a model no longer pickles whole (``torch.save(model)``; its state dict does)."""
    try:
        from transformers.utils import output_capturing as capturing

        registry, install = capturing._CAN_RECORD_REGISTRY, capturing.maybe_install_capturing_hooks
    except (ImportError, AttributeError):  # a transformers without them: nothing installs on the fly
        return
    # A vision tower whose caller picks one of its hidden layers (``vision_feature_layer``: LLaVA, InternVL)
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    vision = vision if hasattr(getattr(model, "config", None), "vision_feature_layer") else None
    for module in model.modules():
        flags = dict.get(registry, str(type(module))) or {}  # 5.24's registry is keyed the same way
        config = getattr(module, "config", None)
        asked = any(getattr(config, f"output_{key}", False) for key in flags)
        if flags and (asked or config is vision is not None) and _records_outputs(type(module).forward):
            install(module)


def _records_outputs(forward) -> bool:
    """Whether ``forward`` is wrapped by transformers' ``capture_outputs`` (its wrapper's code lives
    in ``output_capturing``), under any other decorators."""
    while forward is not None:
        code = getattr(forward, "__code__", None)
        if code is not None and code.co_filename.endswith("output_capturing.py"):
            return True
        forward = getattr(forward, "__wrapped__", None)
    return False


def _family_parts(spec, model):
    """Every part a family patches: its own, its towers, its decoders' (recursively)."""
    parts = [spec, *spec.towers]
    for key in _decoder_keys(spec, model):
        parts += _family_parts(MODEL_SPECS[key], model)
    return parts


def _revert(model_type, model):
    adapters = set()
    for part in _family_parts(MODEL_SPECS[model_type], model):
        modeling = importlib.import_module(part.module)
        forwards = (part.causal_lm, part.multimodal)
        classes = [getattr(modeling, name) for name in forwards if name and hasattr(modeling, name)]
        _restore({modeling, *classes})
        names = (*part.norms, *part.mlps, *(f"Tiled{name}" for name in part.mlps), *part.experts, "relu2")
        adapters |= {_ADAPTERS.get((modeling.__name__, name)) for name in names}
        if part.layer_norm is not None:
            adapters.add(_ADAPTERS.get(("torch.nn", "LayerNorm")))
    adapters.discard(None)
    if model is not None:
        for module in model.modules():
            if type(module) in adapters:
                module.__class__ = type(module).stock_class


def _make_apply(model_type):
    """``apply(<spec.flags>, model=None)`` (``**kwargs`` too for some families), with the signature
    Liger Kernel 0.8.5 gives this family."""
    spec = MODEL_SPECS[model_type]
    P = inspect.Parameter
    params = [P(name, P.POSITIONAL_OR_KEYWORD, default=default) for name, default in spec.flags]
    if "model" not in dict(spec.flags):
        params.append(P("model", P.POSITIONAL_OR_KEYWORD, default=None))
    params += [P(name, P.KEYWORD_ONLY, default=default) for name, default in spec.extra_flags]
    if spec.takes_kwargs:
        params.append(P("kwargs", P.VAR_KEYWORD))
    signature = inspect.Signature(params)

    def apply(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        flags = dict(bound.arguments)
        model, others = flags.pop("model"), flags.pop("kwargs", {})
        _apply(model_type, model, flags, others)

    apply.__signature__ = signature
    apply.__doc__ = _apply_doc(spec)
    return apply


def _apply_doc(spec):
    mlp = ", ".join((*spec.mlps, *(spec.experts if spec.fused_experts else ()))) or (
        "ReLUSquaredActivation" if spec.mlp_kind == RELU2 else "nothing (the MoE experts stay stock)"
    )
    flags = dict(spec.flags)
    lines = [f"Patch {spec.module} with Liger kernels.", ""]
    if "rope" in flags:
        lines.append(f"rope: RoPE kernel for ``{spec.rope}``.")
    if "rms_norm" in flags:
        lines.append(f"rms_norm: {', '.join(n for p in (spec, *spec.towers) for n in p.norms) or 'the decoders'}.")
    if spec.mlp_flag in flags:
        lines.append(f"{spec.mlp_flag}: {mlp}.")
    if spec.extra_flags:
        lines.append(
            "tiled_mlp (ours, keyword only): the MLP in token shards, gate and up recomputed in the backward "
            "(2 x tokens x intermediate fewer activations a layer kept, for 4 x tokens x hidden x intermediate "
            "more FLOPs)."
        )
    if "cross_entropy" in flags:
        forward = "``lce_forward_for_multimodal``" if spec.multimodal else "the generic causal-LM forward"
        lines += [
            "cross_entropy: Liger cross-entropy as the loss on logits.",
            f"fused_linear_cross_entropy: {forward}, whose training loss never materializes",
            "logits (exclusive with ``cross_entropy``).",
        ]
    lines += [
        "model: an already-built model (PEFT-wrapped too) to convert in place, keeping its weights.",
        "Flags are bools (None is off); a bad argument raises before anything is patched.",
    ]
    if spec.note:
        lines += ["", *textwrap.wrap(spec.note, 100)]
    return "\n    ".join(lines) + "\n    "


def _make_revert(model_type):
    def revert(model=None):
        _revert(model_type, model)

    revert.__doc__ = f"""Undo ``apply_liger_kernel_to_{model_type}``: restore the stock symbols and
    forward, and with ``model=`` turn that model's converted modules back into the stock classes."""
    return revert


MODEL_TYPE_TO_APPLY_LIGER_FN = {}
__all__ = ["MODEL_TYPE_TO_APPLY_LIGER_FN", "_apply_liger_kernel", "_apply_liger_kernel_to_instance"]
for _model_type in MODEL_SPECS:
    for _prefix, _factory in (("apply", _make_apply), ("revert", _make_revert)):
        _fn = _factory(_model_type)
        _fn.__name__ = _fn.__qualname__ = f"{_prefix}_liger_kernel_to_{_model_type}"
        _fn.__module__ = __name__
        globals()[_fn.__name__] = _fn
        __all__.append(_fn.__name__)
    MODEL_TYPE_TO_APPLY_LIGER_FN[_model_type] = globals()[f"apply_liger_kernel_to_{_model_type}"]
for _alias, _model_type in ALIASES.items():
    MODEL_TYPE_TO_APPLY_LIGER_FN[_alias] = MODEL_TYPE_TO_APPLY_LIGER_FN[_model_type]


def _name(fn):
    """A patch function's name for the log; any callable may sit in the table (a Mock in a test)."""
    return getattr(fn, "__name__", repr(fn))


def _parameters(fn):
    """``fn``'s parameters by name, or None when it takes any keyword (``**kwargs``, or a callable
    without a readable signature, such as a Mock)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return None if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else params


def _accepted(fn, kwargs):
    """The keyword arguments ``fn`` takes, and the names of the rest."""
    params = _parameters(fn)
    if params is None:
        return dict(kwargs), []
    return {k: v for k, v in kwargs.items() if k in params}, sorted(set(kwargs) - set(params))


def _apply_liger_kernel(model_type: str, **kwargs) -> None:
    """Class-level patch for ``model_type``, passing only the keyword arguments its function takes."""
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if fn is None:
        logger.info("No Liger kernels for model type %r: nothing patched.", model_type)
        return
    accepted, ignored = _accepted(fn, kwargs)
    if ignored:
        logger.info("%s ignores %s", _name(fn), ignored)
    fn(**accepted)


def _apply_liger_kernel_to_instance(model, **kwargs):
    """Patch an already-built model (or PEFT wrapper) by its ``config.model_type``, passing only
    the keyword arguments that family's function takes. A type the table does not name is patched
    by structure, each replacement verified first (``structural``); its report is returned."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if fn is None:
        from liger_kernel.transformers.structural import apply_liger_kernel_by_structure

        logger.info("No table entry for model type %r: patching by structure.", model_type)
        return apply_liger_kernel_by_structure(model, **kwargs)
    accepted, ignored = _accepted(fn, kwargs)
    accepted.pop("model", None)
    if ignored:
        logger.info("%s ignores %s", _name(fn), ignored)
    fn(model=model, **accepted)
