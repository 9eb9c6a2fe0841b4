"""liger_kernel: fused, exact Triton kernels for LLM training.

Importing the package is cheap: kernels live in ``liger_kernel.ops``, modules and
Hugging Face patching in ``liger_kernel.transformers``.
"""

__version__ = "1.0.0.dev0"
