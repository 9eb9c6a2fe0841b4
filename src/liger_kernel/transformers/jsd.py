"""``LigerJSD``: the generalized Jensen-Shannon divergence of two log-probability tensors."""

import torch.nn as nn

from liger_kernel.ops import library_jsd  # noqa: F401  (registers the JSD ops that apply_of routes to)
from liger_kernel.ops.jsd import LigerJSDFunction
from liger_kernel.ops.library import apply_of


class LigerJSD(nn.Module):
    """``forward(log_q, log_p, shift_labels=None)``: ``beta KL(p || m) + (1 - beta) KL(q || m)``,
    ``m = beta p + (1 - beta) q``, per row of the student's ``log_q`` and the teacher's ``log_p``
    [BT, V] (beta 0: KL(p || q), beta 1: KL(q || p)), summed and divided by the rows whose
    ``shift_labels`` is not ``ignore_index`` (all rows without labels). See ``ops/jsd.py``."""

    def __init__(self, beta: float = 0.5, ignore_index: int = -100):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1], got {beta}.")
        self.beta = beta
        self.ignore_index = ignore_index

    def forward(self, log_q, log_p, shift_labels=None):
        return apply_of(LigerJSDFunction, "jsd")(log_q, log_p, shift_labels, self.beta, self.ignore_index)
