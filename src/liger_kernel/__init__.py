"""liger_kernel: fused, exact Triton kernels for LLM training.

Importing the package is cheap: kernels live in ``liger_kernel.ops``, modules and
Hugging Face patching in ``liger_kernel.transformers``, the functional API (with a per-call
``impl=``) in ``liger_kernel.functional``. ``set_impl("torch")`` runs every op's PyTorch
reference instead of its Triton kernels (as ``LIGER_KERNEL_IMPL=torch`` does).
"""

import importlib

from liger_kernel.ops.backends.registry import available_impls, get_impl, set_impl

__version__ = "1.0.0.dev0"

# "Backend" is the peer's older word for the implementation: the same switch.
set_backend = set_impl
get_backend = get_impl
available_backends = available_impls

__all__ = ["available_backends", "available_impls", "get_backend", "get_impl", "set_backend", "set_impl"]


def __getattr__(name):
    if name == "functional":  # imports torch and the ops: only when asked for
        return importlib.import_module("liger_kernel.functional")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
