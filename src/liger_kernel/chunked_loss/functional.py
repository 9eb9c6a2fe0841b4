"""The chunked losses' autograd Functions and their ``apply`` aliases."""

from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOFunction

liger_fused_linear_grpo = LigerFusedLinearGRPOFunction.apply
