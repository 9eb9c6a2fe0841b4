"""``LigerTVDLoss``: the total variation distance of two probability tensors."""

import torch.nn as nn

from liger_kernel.ops import library_losses  # noqa: F401  (registers the loss ops that apply_of routes to)
from liger_kernel.ops.divergence import check_reduction
from liger_kernel.ops.library import apply_of
from liger_kernel.ops.tvd import LigerTVDLossFunction


class LigerTVDLoss(nn.Module):
    """``forward(p, q, shift_labels=None)``: ``sum_v |p_v - q_v| / 2`` per row of [BT, V]
    probabilities, rows whose ``shift_labels`` is ``ignore_index`` left out; ``reduction`` "none",
    "sum", "mean" or "batchmean" (the default: over the rows that count). See ``ops/tvd.py``."""

    def __init__(self, reduction: str = "batchmean", ignore_index: int = -100):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index

    def forward(self, p, q, shift_labels=None):
        return apply_of(LigerTVDLossFunction, "tvd")(p, q, shift_labels, self.reduction, self.ignore_index)
