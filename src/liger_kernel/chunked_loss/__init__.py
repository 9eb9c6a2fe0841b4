"""Post-training and distillation losses on hidden states and a head, without the logits."""

from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOLoss  # noqa: F401
