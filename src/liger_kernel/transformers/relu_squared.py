"""``LigerReLUSquared``: a drop-in for Hugging Face's ``ReLUSquaredActivation`` (``ACT2FN["relu2"]``)."""

import torch.nn as nn

from liger_kernel.ops.library import apply_of
from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction


class LigerReLUSquared(nn.Module):
    """``relu(x) ** 2`` elementwise: ``(x [...]) -> same shape``."""

    def forward(self, x):
        return apply_of(LigerReLUSquaredFunction, "relu_squared")(x)
