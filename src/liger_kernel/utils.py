"""Device discovery, optional-dependency flags and the implementation switch."""

import functools
import importlib.util
import operator
import os
import platform

import torch

from liger_kernel.ops.backends.registry import launches_kernels

PEFT_AVAILABLE = importlib.util.find_spec("peft") is not None
TRANSFORMERS_AVAILABLE = importlib.util.find_spec("transformers") is not None


def is_peft_available() -> bool:
    """True when ``peft`` is installed."""
    return PEFT_AVAILABLE


def is_transformers_available() -> bool:
    """True when ``transformers`` is installed (the Hugging Face patching needs it)."""
    return TRANSFORMERS_AVAILABLE


def is_npu_available() -> bool:
    """True when an Ascend NPU is usable through ``torch_npu``."""
    return hasattr(torch, "npu") and callable(getattr(torch.npu, "is_available", None)) and torch.npu.is_available()


def infer_device() -> str:
    """The accelerator to run on: ``"cuda"``, ``"xpu"``, ``"npu"`` or ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if is_npu_available():
        return "npu"
    return "cpu"


_COMM_BACKENDS = {"cuda": "nccl", "xpu": "xccl", "npu": "hccl", "cpu": "gloo"}


def infer_comm_backend() -> str:
    """The ``torch.distributed`` backend for ``infer_device()``: nccl, xccl, hccl or gloo."""
    return _COMM_BACKENDS[infer_device()]


@functools.lru_cache
def infer_device_arch(device_id: int = 0) -> str:
    """Architecture of accelerator ``device_id``: ``"sm_90"`` (NVIDIA), ``"gfx942"`` (AMD), the
    device name on XPU/NPU, the CPU's machine type (``"x86_64"``) without an accelerator."""
    device = infer_device()
    if device == "cuda":
        if torch.version.hip:
            return torch.cuda.get_device_properties(device_id).gcnArchName.split(":")[0]
        major, minor = torch.cuda.get_device_capability(device_id)
        return f"sm_{major}{minor}"
    if device in ("xpu", "npu"):
        return getattr(torch, device).get_device_name(device_id)
    return platform.machine()


def get_total_gpu_memory() -> int:
    """Total memory of the current accelerator in GiB (rounded down); 0 without one."""
    device = infer_device()
    if device == "cpu":
        return 0
    module = getattr(torch, device)
    return module.get_device_properties(module.current_device()).total_memory // 2**30


def transformers_version_dispatch(
    required_version: str,
    before_fn,
    after_fn,
    before_args: tuple = (),
    after_args: tuple = (),
    before_kwargs: dict | None = None,
    after_kwargs: dict | None = None,
):
    """``before_fn(*before_args, **before_kwargs)`` if the installed transformers is older than
    ``required_version``, else ``after_fn(*after_args, **after_kwargs)``; returns its result."""
    from liger_kernel.ops.utils import compare_version

    if compare_version("transformers", operator.lt, required_version):
        return before_fn(*before_args, **(before_kwargs or {}))
    return after_fn(*after_args, **(after_kwargs or {}))


# Triton decides at import whether its kernels run interpreted; so do we (an environment lookup
# per call costs microseconds of host time).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` when this
    package was imported)."""
    return _INTERPRETING


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on ``tensor`` runs its Triton kernels or its PyTorch reference.

    ``set_impl("torch")`` or ``LIGER_KERNEL_IMPL=torch`` forces the reference everywhere (see
    ``liger_kernel.ops.backends.registry``). Otherwise GPU tensors take the kernels, and CPU
    tensors take them only under the interpreter. Cached: ~0.2 us a call.
    """
    return launches_kernels(tensor.device.type)
