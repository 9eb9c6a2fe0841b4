"""Where Hugging Face's ``Trainer`` once imported ``_apply_liger_kernel`` from: the same function."""

from liger_kernel.transformers.monkey_patch import _apply_liger_kernel

__all__ = ["_apply_liger_kernel"]
