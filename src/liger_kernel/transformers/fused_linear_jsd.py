"""``LigerFusedLinearJSD``: the generalized JSD of a student and a teacher head, without logits."""

import torch.nn as nn

from liger_kernel.ops import library_jsd  # noqa: F401  (registers the JSD ops that apply_of routes to)
from liger_kernel.ops.divergence import check_temperature
from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction
from liger_kernel.ops.library import apply_of


class LigerFusedLinearJSD(nn.Module):
    """``forward(student_input, student_weight, teacher_input, teacher_weight, shift_labels)``: the
    JSD (``LigerJSD``, ``beta = jsd_beta``) of ``log_softmax(student_input @ student_weight.T / T)``
    and the teacher's, without the ``[BT, V]`` logits; ``shift_labels`` [BT] (or None) masks
    rows at ``ignore_index``. ``accum_dtype``: the weight gradient's accumulation dtype (None:
    fp32, every gradient rounded once). See ``ops/fused_linear_jsd.py``."""

    def __init__(self, jsd_beta: float = 0.5, ignore_index: int = -100, temperature: float = 1.0, accum_dtype=None):
        super().__init__()
        if not 0.0 <= jsd_beta <= 1.0:
            raise ValueError(f"`jsd_beta` must be in [0, 1], got {jsd_beta}.")
        self.jsd_beta = jsd_beta
        self.temperature = check_temperature(temperature)
        self.ignore_index = ignore_index
        self.accum_dtype = accum_dtype

    def forward(self, student_input, student_weight, teacher_input, teacher_weight, shift_labels):
        return apply_of(LigerFusedLinearJSDFunction, "fused_linear_jsd")(
            student_input, student_weight, teacher_input, teacher_weight, shift_labels, self.jsd_beta,
            self.ignore_index, self.temperature, self.accum_dtype,
        )  # fmt: skip
