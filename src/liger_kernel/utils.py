"""Device discovery, optional-dependency flags and the implementation switch."""

import importlib.util
import os

import torch

PEFT_AVAILABLE = importlib.util.find_spec("peft") is not None
TRANSFORMERS_AVAILABLE = importlib.util.find_spec("transformers") is not None


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


# Triton decides at import whether its kernels run interpreted; so do we (an environment lookup
# per call costs microseconds of host time).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` when this
    package was imported)."""
    return _INTERPRETING


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on ``tensor`` runs its Triton kernels or its PyTorch reference.

    ``LIGER_KERNEL_IMPL=torch`` forces the reference everywhere (for debugging). Otherwise
    GPU tensors take the kernels, and CPU tensors take them only under the interpreter.
    """
    if os.environ.get("LIGER_KERNEL_IMPL", "auto") == "torch":
        return False
    return tensor.device.type != "cpu" or interpreting()
