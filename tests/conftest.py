"""Test set-up: on a machine without a GPU the Triton kernels run in Triton's interpreter, which
must be chosen before any kernel module is imported; kernel outputs are poisoned with NaN so an
unwritten element fails its comparison."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("LIGER_KERNEL_POISON", "1")
