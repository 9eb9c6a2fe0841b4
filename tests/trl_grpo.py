"""TRL's own (non-Liger) GRPO loss, the yardstick of tests/test_chunked_grpo.py and
tests/test_grpo_loss_op.py: a port of trl 1.16.0 trl/trainer/grpo_trainer.py,
``GRPOTrainer._compute_loss`` (loss and the ``kl`` / clip metrics) and
``GRPOTrainer.get_gamma_weights``, for one process without gradient accumulation (every
accumulation normalizer 1) and without the entropy / off-policy masks. Run in float64."""

import math

import torch


def trl_get_gamma_weights(advantages, log_ratio_per_token, mask, importance_sampling_ratio, k_pos, lambda_pos, k_neg,
                          lambda_neg):  # fmt: skip
    """trl 1.16.0 GRPOTrainer.get_gamma_weights (no_grad there)."""
    with torch.no_grad():
        lower_clamp = math.log(1e-8)
        log_ratio_clamped = torch.clamp(log_ratio_per_token, -20.0, 20.0)
        seq_log_ratio = torch.sum(log_ratio_clamped * mask, dim=-1, keepdim=True)
        if importance_sampling_ratio is not None:
            log_is_ratio = torch.clamp(torch.log(importance_sampling_ratio), lower_clamp, 20.0)
            seq_log_ratio += torch.sum(log_is_ratio, dim=-1, keepdim=True)
        log_w_seq = torch.clamp(seq_log_ratio, lower_clamp, 20.0)
        w_seq = torch.exp(log_w_seq)
        is_nonneg_adv = advantages >= 0
        k_seq = torch.where(is_nonneg_adv, k_pos, k_neg)
        lambda_seq = torch.where(is_nonneg_adv, lambda_pos, lambda_neg).clamp(min=1e-4)
        log_phi = lambda_seq + k_seq * log_w_seq - lambda_seq * w_seq
        return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def trl_grpo_loss(
    per_token_logps,
    old_per_token_logps,
    ref_per_token_logps,
    advantages,
    mask,
    loss_type="dapo",
    beta=0.04,
    epsilon_low=0.2,
    epsilon_high=0.2,
    importance_sampling_level="token",
    delta=None,
    use_bias_correction_kl=False,
    importance_sampling_ratio=None,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vespo_k_pos=2.0,
    vespo_lambda_pos=3.0,
    vespo_k_neg=3.0,
    vespo_lambda_neg=2.0,
    max_completion_length=None,
    num_items_in_batch=None,
):
    """``(loss, kl_metric or None, clip_metric or None)``; TRL logs no clip metric for sapo and
    vespo (ours reports 0 there). ``num_items_in_batch`` None: the mask's sum (what the trainer
    passes for one process and one micro-batch)."""
    mask = mask.to(per_token_logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if beta != 0.0:
        per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
        per_token_loss = -clamped_ratios * advantages * per_token_logps
    elif loss_type in ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]:
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    elif loss_type == "sapo":
        temperatures = torch.where(advantages > 0, sapo_temperature_pos, sapo_temperature_neg)
        soft_coef_1 = torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures
        per_token_loss = -soft_coef_1 * advantages
    elif loss_type == "vespo":
        phi_seq = trl_get_gamma_weights(
            advantages, log_ratio, mask, importance_sampling_ratio, vespo_k_pos, vespo_lambda_pos, vespo_k_neg,
            vespo_lambda_neg,
        )  # fmt: skip
        per_token_loss = -phi_seq * advantages * per_token_logps
    if importance_sampling_ratio is not None and loss_type != "vespo":
        per_token_loss = per_token_loss * importance_sampling_ratio
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type in ["grpo", "sapo"]:
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type in ["cispo", "dapo", "vespo"]:
        items = mask.sum() if num_items_in_batch is None else torch.as_tensor(float(num_items_in_batch))
        loss = (per_token_loss * mask).sum() / items.clamp(min=1.0)
    else:  # luspo
        loss = (per_token_loss * mask).sum(-1).mean()

    def global_masked_mean(x):
        if x.shape[1] == 1:
            return x.sum() / float(x.shape[0])
        return (x * mask).sum() / mask.sum().float().clamp(min=1.0)

    kl = global_masked_mean(per_token_kl) if beta != 0.0 else None
    clip = None
    if loss_type in ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]:
        is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages < 0)
        is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages > 0)
        clip = global_masked_mean((is_low_clipped | is_high_clipped).to(mask.dtype))
    elif loss_type == "cispo":
        clip = global_masked_mean(((coef_1 > epsilon_high) & (advantages > 0)).to(mask.dtype))
    return loss, kl, clip


def rollout_batch(logp, g, device):
    """What a GRPO batch carries beside the policy's float64 ``logp`` [B, T]: a mask with a
    partly and a fully masked completion, advantages of both signs, and old / reference log-probs
    near the policy's (importance ratios around the clip range)."""
    n_seqs, n_pos = logp.shape
    mask = torch.ones(n_seqs, n_pos, dtype=torch.int64)
    mask[0, n_pos // 2 :] = 0
    mask[1] = 0
    adv = torch.randn(n_seqs, generator=g)
    adv[0], adv[-1] = abs(adv[0]) + 0.1, -abs(adv[-1]) - 0.1
    old = (logp + 0.3 * torch.randn(n_seqs, n_pos, generator=g).to(device, torch.float64)).float()
    ref = (logp + 0.3 * torch.randn(n_seqs, n_pos, generator=g).to(device, torch.float64)).float()
    return mask.to(device), adv.to(device), old, ref
