"""Distillation by the cosine similarity of the student's and the teacher's logits, from hidden states.

Per non-ignored token: ``beta * (1 - cos(z, zt))`` (scale-free, so the temperature only scales
its gradient path as for the other losses); the total loss, chunking and memory are those of
``fused_linear_distillation``.
"""

import torch
import torch.nn.functional as F

from liger_kernel.chunked_loss.fused_linear_distillation import (
    DistillationLossModule,
    LigerFusedLinearDistillationBase,
    at_least_fp32,
    student_teacher_backward,
    student_teacher_forward,
)


class LigerFusedLinearCosineSimilarityFunction(LigerFusedLinearDistillationBase):
    """``weight_hard_loss * CE + weight_soft_loss * beta * (1 - cos)`` (module docstring)."""

    @classmethod
    def hook_masks_ignored_rows(cls):
        return cls.distillation_loss_fn is LigerFusedLinearCosineSimilarityFunction.distillation_loss_fn

    @staticmethod
    def distillation_loss_fn(student_logits, teacher_logits, target=None, ignore_index=None, beta=1.0):
        """``beta * (1 - cos)`` summed over the rows whose ``target`` is not ``ignore_index``."""
        rows = beta * (1 - F.cosine_similarity(at_least_fp32(student_logits), at_least_fp32(teacher_logits), dim=-1))
        if target is not None and ignore_index is not None:
            rows = torch.where(target != ignore_index, rows, 0.0)
        return rows.sum()

    forward = classmethod(student_teacher_forward)
    backward = staticmethod(student_teacher_backward)


class LigerFusedLinearCosineSimilarityLoss(DistillationLossModule):
    """``LigerFusedLinearCosineSimilarityFunction`` as a module: ``forward(student_input,
    student_weight, teacher_input, teacher_weight, true_labels, student_bias=None,
    teacher_bias=None)``."""

    function = LigerFusedLinearCosineSimilarityFunction
