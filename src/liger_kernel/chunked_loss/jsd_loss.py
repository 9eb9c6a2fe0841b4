"""Distillation with the generalized Jensen-Shannon divergence (TRL's GKD loss) from hidden states.

Per non-ignored token, with ``p = softmax(z / T)`` (student), ``q = softmax(zt / T)`` (teacher)::

    beta = 0:  KL(q || p)                                   (forward KL)
    beta = 1:  KL(p || q)                                   (reverse KL)
    else:      beta * KL(q || m) + (1 - beta) * KL(p || m),  m = (1 - beta) p + beta q

as TRL's ``GKDTrainer.generalized_jsd_loss`` (0.24 and 1.16); the total loss, chunking and memory
are those of ``fused_linear_distillation``.
"""

import torch

from liger_kernel.chunked_loss.fused_linear_distillation import (
    DistillationLossModule,
    LigerFusedLinearDistillationBase,
    student_teacher_backward,
    student_teacher_forward,
)
from liger_kernel.ops.jsd_distillation_rows import jsd_distillation_rows, jsd_rows_reference


class LigerFusedLinearJSDFunction(LigerFusedLinearDistillationBase):
    """``weight_hard_loss * CE + weight_soft_loss * JSD_beta`` (module docstring) from the student's
    and the teacher's hidden states and heads. Its rows run through the row kernel of
    ``ops/jsd_distillation_rows.py`` (3 passes over both logits, the gradient written over the
    student's) and ignored tokens are dropped before the matmuls, unless a subclass replaces
    ``distillation_loss_fn`` (then the base's autograd path over every token)."""

    @classmethod
    def hook_masks_ignored_rows(cls):
        return cls.distillation_loss_fn is LigerFusedLinearJSDFunction.distillation_loss_fn

    @classmethod
    def row_arrays(cls):
        return 0 if cls.hook_masks_ignored_rows() else super().row_arrays()

    @classmethod
    def rows_loss_and_grad(cls, student_logits, teacher_logits, target, grad_out, scale, opts):
        if not cls.hook_masks_ignored_rows():
            return super().rows_loss_and_grad(student_logits, teacher_logits, target, grad_out, scale, opts)
        return jsd_distillation_rows(
            student_logits, teacher_logits, target, grad_out, scale, opts.hook_kwargs["beta"], opts.temperature,
            opts.ignore_index, opts.weight_hard_loss, opts.weight_soft_loss, opts.compute_ce_loss,
        )  # fmt: skip

    @staticmethod
    def check_beta(beta) -> None:
        if not 0 <= beta <= 1:
            raise ValueError(f"`beta` must be in [0, 1] (the teacher's weight in the mixture); got {beta!r}.")

    @staticmethod
    def distillation_loss_fn(student_logits, teacher_logits, beta=0.5, target=None, ignore_index=-100):
        """The generalized JSD summed over the rows whose ``target`` is not ``ignore_index``."""
        rows = jsd_rows_reference(student_logits, teacher_logits, beta)
        if target is not None:
            rows = torch.where(target != ignore_index, rows, 0.0)
        return rows.sum()

    forward = classmethod(student_teacher_forward)
    backward = staticmethod(student_teacher_backward)


class LigerFusedLinearJSDLoss(DistillationLossModule):
    """``LigerFusedLinearJSDFunction`` as a module: ``forward(student_input, student_weight,
    teacher_input, teacher_weight, true_labels, student_bias=None, teacher_bias=None)``."""

    function = LigerFusedLinearJSDFunction
    op = "fused_linear_jsd_distillation"


from liger_kernel.ops import library_jsd  # noqa: E402, F401  (registers the op; it imports this module)
