"""The implementation switch: which code path every op runs.

Each op has two: its Triton kernels ("triton", the default, on a GPU or in Triton's CPU
interpreter) and its plain-PyTorch reference ("torch", the spec, which runs anywhere). The
selection is one value, set by ``set_impl(name)`` or the ``LIGER_KERNEL_IMPL`` environment
variable, whichever changed last (``set_impl`` writes the variable, so child processes inherit
it). A name that is not registered (Axolotl's ``liger_kernel_impl: cutile`` sets "cutile") warns
once and selects "triton". Where the selected implementation cannot run on a device (the kernels
on a CPU without the interpreter) the op falls back to the next one that can.

This module imports nothing heavy: ``import liger_kernel.ops`` loads it, so that an unknown
``LIGER_KERNEL_IMPL`` is reported at import.
"""

import contextlib
import contextvars
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

LIGER_KERNEL_IMPL_ENV = "LIGER_KERNEL_IMPL"

DEFAULT_IMPL = "triton"

# Ops that run through the switch (their ``ops.<name>`` modules).
OPS = (
    "cross_entropy",
    "fused_ce_tvd",
    "fused_linear_cross_entropy",
    "fused_linear_jsd",
    "fused_linear_kl_div",
    "geglu",
    "jsd",
    "kl_div",
    "layer_norm",
    "relu_squared",
    "rms_norm",
    "rope",
    "swiglu",
    "tvd",
    "qwen2vl_mrope",
    "llama4_rope",
    "fused_add_rms_norm",
)


@dataclass(frozen=True)
class ImplInfo:
    """One implementation of the ops.

    ``kernels``: whether the ops launch their Triton kernels under it (else they run their
    PyTorch reference). ``runs_on(device_type)``: whether it can run on that device type.
    ``module_path``: the module holding its code (Axolotl looks it up in ``sys.modules``).
    """

    name: str
    module_path: str
    description: str
    kernels: bool
    runs_on: Callable[[str], bool]
    ops: tuple = OPS


def _triton_runs_on(device_type: str) -> bool:
    from liger_kernel.utils import interpreting  # imports torch: only on a cache miss

    return device_type != "cpu" or interpreting()


IMPL_REGISTRY: dict[str, ImplInfo] = {}


def register_impl(info: ImplInfo) -> ImplInfo:
    """Add ``info`` to ``IMPL_REGISTRY`` (replacing an entry of the same name); returns it."""
    if not isinstance(info, ImplInfo):
        raise TypeError(f"`info` must be an ImplInfo, got {type(info).__name__}.")
    unknown = sorted(set(info.ops) - set(OPS))
    if unknown:
        raise ValueError(f"`info.ops` names ops that do not exist: {unknown}; the ops are {list(OPS)}.")
    IMPL_REGISTRY[info.name] = info
    _DECISIONS.clear()
    return info


_DECISIONS: dict = {}  # (impl name, device type) -> whether the ops launch kernels

register_impl(
    ImplInfo(
        name="triton",
        module_path="liger_kernel.ops",
        description="Triton kernels (on a GPU; on a CPU only under TRITON_INTERPRET=1)",
        kernels=True,
        runs_on=_triton_runs_on,
    )
)
register_impl(
    ImplInfo(
        name="torch",
        module_path="liger_kernel.ops",
        description="plain-PyTorch reference of each op (any device; the CPU fallback)",
        kernels=False,
        runs_on=lambda device_type: True,
    )
)


# ----------------------------------------------------------------------------- the selection

# os.environ keeps its contents in ``_data`` under encoded keys: one dict lookup (~50 ns) sees a
# change made through os.environ (monkeypatch.setenv included), where ``os.environ.get`` costs
# ~1.8 us, and ``use_triton`` runs on every op call.
_ENV_DATA = getattr(os.environ, "_data", os.environ)
_ENV_KEY = os.environ.encodekey(LIGER_KERNEL_IMPL_ENV) if hasattr(os.environ, "encodekey") else LIGER_KERNEL_IMPL_ENV
_env_seen = object()  # the raw value the selection was last read from
_selected = DEFAULT_IMPL
_warned: set = set()

# impl= of one call (liger_kernel.functional): overrides the selection in this context only.
_CALL_IMPL: contextvars.ContextVar = contextvars.ContextVar("liger_kernel_call_impl", default=None)


def _normalize(name) -> str:
    return DEFAULT_IMPL if name in (None, "", "auto", "default") else str(name).strip().lower()


def _follow_env() -> None:
    """Select what ``LIGER_KERNEL_IMPL`` names; an unknown name warns once and selects the default."""
    global _env_seen, _selected
    _env_seen = _ENV_DATA.get(_ENV_KEY)
    name = _normalize(os.environ.get(LIGER_KERNEL_IMPL_ENV))
    if name not in IMPL_REGISTRY:
        if name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"{LIGER_KERNEL_IMPL_ENV}={name!r} names no implementation of liger_kernel; using "
                f"{DEFAULT_IMPL!r}. Implementations: {sorted(IMPL_REGISTRY)}.",
                stacklevel=3,
            )
        name = DEFAULT_IMPL
    _selected = name


def _check_name(name) -> str:
    name = _normalize(name)
    if name not in IMPL_REGISTRY:
        raise ValueError(f"Unknown implementation {name!r}: choose one of {sorted(IMPL_REGISTRY)}.")
    return name


def set_impl(name: str) -> None:
    """Select the implementation every op runs ("triton" or "torch"; None or "auto": the default).
    Sets ``LIGER_KERNEL_IMPL`` too, so the two never disagree."""
    os.environ[LIGER_KERNEL_IMPL_ENV] = _check_name(name)
    _follow_env()


def get_impl() -> str:
    """The selected implementation's name."""
    if _ENV_DATA.get(_ENV_KEY) != _env_seen:
        _follow_env()
    return _selected


@contextlib.contextmanager
def impl_for_call(name):
    """Within the block (this thread or task only), ops run implementation ``name``; None keeps
    the selection."""
    token = _CALL_IMPL.set(None if name is None else _check_name(name))
    try:
        yield
    finally:
        _CALL_IMPL.reset(token)


def _check_op(op_name: str) -> None:
    if op_name not in OPS:
        raise ValueError(f"Unknown op {op_name!r}: the ops are {list(OPS)}.")


def _device_type(device) -> str:
    if device is None:
        from liger_kernel.utils import infer_device

        return infer_device()
    import torch

    return torch.device(device).type


def _fallbacks(name: str):
    yield IMPL_REGISTRY[name]
    yield from (IMPL_REGISTRY[n] for n in (DEFAULT_IMPL, "torch") if n != name)


def select_impl(op_name: str | None = None, device=None) -> ImplInfo:
    """The implementation ``op_name`` (any op when None) runs on ``device`` (a device, or its
    type; None: the accelerator ``infer_device`` finds): the selected one if it covers the op and
    runs there, else "triton" if it runs there, else "torch"."""
    if op_name is not None:
        _check_op(op_name)
    device_type = _device_type(device)
    return next(
        info
        for info in _fallbacks(_CALL_IMPL.get() or get_impl())
        if (op_name is None or op_name in info.ops) and info.runs_on(device_type)
    )


def available_impls(op_name: str, device=None) -> list[str]:
    """Names of the implementations that can run ``op_name`` on ``device`` (None: the
    accelerator ``infer_device`` finds)."""
    _check_op(op_name)
    device_type = _device_type(device)
    return [name for name, info in IMPL_REGISTRY.items() if op_name in info.ops and info.runs_on(device_type)]


def launches_kernels(device_type: str) -> bool:
    """Whether the ops launch their Triton kernels on ``device_type`` now (``use_triton``'s answer,
    cached per implementation and device type)."""
    if _ENV_DATA.get(_ENV_KEY) != _env_seen:
        _follow_env()
    key = (_CALL_IMPL.get() or _selected, device_type)
    decision = _DECISIONS.get(key)
    if decision is None:
        decision = _DECISIONS[key] = select_impl(device=device_type).kernels
    return decision


_follow_env()
