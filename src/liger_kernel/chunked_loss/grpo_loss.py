"""GRPO and its variants on hidden states and a head: ``LigerFusedLinearGRPOLoss`` (what TRL's
``GRPOTrainer`` builds with ``use_liger_loss`` / ``use_liger_kernel``) and its autograd Function.

Returns ``(loss, metrics)``: ``metrics`` is ``(mean_kl, clip_ratio)`` when ``beta != 0``, else
``(clip_ratio,)`` (TRL reads ``metrics[0]`` as the KL and ``metrics[-1]`` as the clip ratio).
The math (every loss type, the options, the metrics' definitions) is the head of
``liger_kernel.ops.grpo_loss``; the one-pass fused head is ``liger_kernel.ops.fused_linear_ppo``.
"""

import torch

from liger_kernel.chunked_loss.fused_linear_ppo import LigerFusedLinearPPOBase
from liger_kernel.ops.grpo_loss import (  # noqa: F401  (the helpers are public here, as in Liger Kernel 0.8.5)
    GRPONorm,
    GRPOOptions,
    clip_coef_fn,
    dapo_normalizer,
    get_gamma_weights,
    grpo_loss_from_logps,
    k3_loss_fn,
    sapo_loss_fn,
)


class LigerFusedLinearGRPOFunction(LigerFusedLinearPPOBase):
    @staticmethod
    def ppo_loss_fn(
        per_token_logps,
        attention_mask,
        advantages,
        full_attention_mask,
        ref_per_token_logps=None,
        old_per_token_logps=None,
        epsilon_low=0.2,
        epsilon_high=0.2,
        beta=0.04,
        loss_type="dapo",
        max_completion_length=None,
        importance_sampling_level="token",
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        vllm_is_ratio=None,
        delta=None,
        use_bias_correction_kl=False,
        vespo_k_pos=2.0,
        vespo_lambda_pos=3.0,
        vespo_k_neg=3.0,
        vespo_lambda_neg=2.0,
        num_items_in_batch=None,
        **kwargs,
    ):
        """The GRPO loss of one chunk of whole sequences (``[b, T]`` tensors), normalized by the
        whole batch's ``full_attention_mask``: ``(loss, metrics)``."""
        opts = GRPOOptions(
            loss_type, beta, epsilon_low, epsilon_high, importance_sampling_level, max_completion_length,
            sapo_temperature_pos, sapo_temperature_neg, delta, use_bias_correction_kl, vespo_k_pos, vespo_lambda_pos,
            vespo_k_neg, vespo_lambda_neg,
        ).check()  # fmt: skip
        full = full_attention_mask
        norm = GRPONorm(
            full.shape[0], full.to(torch.float32).sum().clamp(min=1.0), dapo_normalizer(full, num_items_in_batch)
        )
        return grpo_loss_from_logps(
            per_token_logps, attention_mask, advantages, old_per_token_logps, ref_per_token_logps, vllm_is_ratio, opts,
            norm,
        )  # fmt: skip

    @classmethod
    def forward(
        cls,
        ctx,
        _input,
        weight,
        selected_token_ids,
        attention_mask,
        advantages,
        bias=None,
        ref_per_token_logps=None,
        old_per_token_logps=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        beta=0.04,
        epsilon_low=0.2,
        epsilon_high=0.2,
        loss_type="dapo",
        max_completion_length=None,
        importance_sampling_level="token",
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        temperature=1.0,
        compiled=True,
        use_ref_model=True,
        chunk_size=1,
        vllm_is_ratio=None,
        delta=None,
        use_bias_correction_kl=False,
        vespo_k_pos=2.0,
        vespo_lambda_pos=3.0,
        vespo_k_neg=3.0,
        vespo_lambda_neg=2.0,
        num_items_in_batch=None,
    ):
        """Arguments as ``LigerFusedLinearPPOBase.forward``; returns ``(loss, metrics)``."""
        GRPOOptions(
            loss_type, beta, epsilon_low, epsilon_high, importance_sampling_level, max_completion_length
        ).check()
        return super().forward(
            cls=cls, ctx=ctx, _input=_input, weight=weight, selected_token_ids=selected_token_ids,
            attention_mask=attention_mask, advantages=advantages, bias=bias, ref_per_token_logps=ref_per_token_logps,
            old_per_token_logps=old_per_token_logps, ref_input=ref_input, ref_weight=ref_weight, ref_bias=ref_bias,
            epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta, loss_type=loss_type,
            max_completion_length=max_completion_length, importance_sampling_level=importance_sampling_level,
            temperature=temperature, compiled=compiled, use_ref_model=use_ref_model, chunk_size=chunk_size,
            sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
            vllm_is_ratio=vllm_is_ratio, delta=delta, use_bias_correction_kl=use_bias_correction_kl,
            vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, grad_output, *grad_metrics):
        grads = LigerFusedLinearPPOBase.backward(ctx, grad_output, *grad_metrics)
        return grads + (None,) * 25  # 31 arguments


class LigerFusedLinearGRPOLoss(torch.nn.Module):
    """The GRPO loss on ``(hidden states, lm_head weight)``; options as TRL's ``GRPOConfig``
    names them (see ``liger_kernel.ops.grpo_loss``). ``forward`` returns ``(loss, metrics)``."""

    def __init__(
        self,
        beta: float = 0.04,
        compiled: bool = True,
        use_ref_model: bool = True,
        chunk_size: int = 1,
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        loss_type: str = "dapo",
        max_completion_length: int | None = None,
        importance_sampling_level: str = "token",
        sapo_temperature_pos: float = 1.0,
        sapo_temperature_neg: float = 1.05,
        temperature: float = 1.0,
        delta: float | None = None,
        use_bias_correction_kl: bool = False,
        vespo_k_pos: float = 2.0,
        vespo_lambda_pos: float = 3.0,
        vespo_k_neg: float = 3.0,
        vespo_lambda_neg: float = 2.0,
    ):
        super().__init__()
        GRPOOptions(
            loss_type, beta, epsilon_low, epsilon_high, importance_sampling_level, max_completion_length
        ).check()
        self.beta = beta
        self.compiled = compiled
        self.use_ref_model = use_ref_model
        self.chunk_size = chunk_size
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_high
        self.loss_type = loss_type
        self.max_completion_length = max_completion_length
        self.importance_sampling_level = importance_sampling_level
        self.sapo_temperature_pos = sapo_temperature_pos
        self.sapo_temperature_neg = sapo_temperature_neg
        self.temperature = temperature
        self.delta = delta
        self.use_bias_correction_kl = use_bias_correction_kl
        self.vespo_k_pos = vespo_k_pos
        self.vespo_lambda_pos = vespo_lambda_pos
        self.vespo_k_neg = vespo_k_neg
        self.vespo_lambda_neg = vespo_lambda_neg

    def forward(
        self,
        _input,
        lin_weight,
        selected_token_ids,
        attention_mask,
        advantages,
        bias=None,
        ref_per_token_logps=None,
        old_per_token_logps=None,
        ref_input=None,
        ref_weight=None,
        ref_bias=None,
        vllm_is_ratio=None,
        num_items_in_batch=None,
    ):
        return LigerFusedLinearGRPOFunction.apply(
            _input,
            lin_weight,
            selected_token_ids,
            attention_mask,
            advantages,
            bias,
            ref_per_token_logps,
            old_per_token_logps,
            ref_input,
            ref_weight,
            ref_bias,
            self.beta,
            self.epsilon_low,
            self.epsilon_high,
            self.loss_type,
            self.max_completion_length,
            self.importance_sampling_level,
            self.sapo_temperature_pos,
            self.sapo_temperature_neg,
            self.temperature,
            self.compiled,
            self.use_ref_model,
            self.chunk_size,
            vllm_is_ratio,
            self.delta,
            self.use_bias_correction_kl,
            self.vespo_k_pos,
            self.vespo_lambda_pos,
            self.vespo_k_neg,
            self.vespo_lambda_neg,
            num_items_in_batch,
        )
