"""``triton_grpo_loss``: the GRPO loss on materialized logits (``liger_kernel.ops.grpo_loss``)."""

import torch

from liger_kernel.ops import library_losses  # noqa: F401  (registers the loss ops that apply_of routes to)
from liger_kernel.ops.grpo_loss import GrpoLossFunction, GRPOOptions, fused_selective_log_softmax, vespo_weights
from liger_kernel.ops.library import apply_of


def triton_grpo_loss(
    logits,
    old_logp,
    ref_logp,
    completion_ids,
    advantages,
    completion_mask=None,
    temperature=0.9,
    beta=0.04,
    eps_low=0.2,
    eps_high=0.4,
    inplace=True,
    loss_type="dapo",
    max_completion_length=None,
    importance_sampling_level="token",
    reduce=False,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vllm_is_ratio=None,
    delta=None,
    use_bias_correction_kl=False,
    num_items_in_batch=None,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
):
    """GRPO on ``logits`` [B, T+1, V] for ``completion_ids`` [B, T]: ``(loss, kl, clip)`` as
    ``GrpoLossFunction`` returns them (per token when ``reduce`` is False). For ``loss_type="vespo"``
    the sequence weights are computed here from the log-probs (one extra read of the logits) with
    the ``vespo_*`` parameters."""
    phi_seq = None
    if loss_type == "vespo":
        with torch.no_grad():
            logp = fused_selective_log_softmax(logits, completion_ids, temperature)
            mask = torch.ones_like(logp) if completion_mask is None else completion_mask
            opts = GRPOOptions(
                vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
                vespo_lambda_neg=vespo_lambda_neg,
            )  # fmt: skip
            phi_seq = vespo_weights(logp, mask, advantages, old_logp, vllm_is_ratio, opts)
    return apply_of(GrpoLossFunction, "grpo_loss")(
        logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, temperature, beta, eps_low, eps_high,
        inplace, loss_type, max_completion_length, reduce, importance_sampling_level, sapo_temperature_pos,
        sapo_temperature_neg, vllm_is_ratio, delta, use_bias_correction_kl, num_items_in_batch, phi_seq,
    )  # fmt: skip
