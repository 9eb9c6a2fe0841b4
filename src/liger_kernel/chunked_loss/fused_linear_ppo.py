"""``LigerFusedLinearPPOBase``: the autograd Function under the PPO-family losses (GRPO and its
variants) on hidden states and a head, without the logits.

A subclass supplies ``ppo_loss_fn(per_token_logps, attention_mask, advantages,
full_attention_mask, ...) -> (loss, metrics)`` on ``[b, T]`` log-probs of a chunk of whole
sequences, normalized by the whole batch (``full_attention_mask``) so that chunk values add up;
its ``forward`` calls ``LigerFusedLinearPPOBase.forward(cls, ctx, ...)``. The base runs it through
the one-pass engine of ``liger_kernel.ops.fused_linear_ppo`` (6NHV; the spec's logits, in the
input dtype without a temperature, fp32 with one; fp32 weight-gradient accumulation) and returns
``(loss, metrics)``; the gradients of input, weight and bias are computed in the forward and
scaled by the upstream gradient in ``backward``.

``compiled`` and ``chunk_size`` are accepted for compatibility with Liger Kernel 0.8.5 (which
runs ``torch.compile`` on chunks of ``chunk_size`` sequences); here nothing is compiled and
chunks are sized by memory (``ops.fused_linear_ppo.ROWS_BUDGET_BYTES``).
"""

import torch

from liger_kernel.ops.cross_entropy import caller_grad_mode, scale_by_upstream
from liger_kernel.ops.fused_linear_logprobs import (
    frozen_head_logprobs,
    fused_linear_logprobs,
    one_pass_logits_dtype,
)
from liger_kernel.ops.fused_linear_ppo import logps_and_grads
from liger_kernel.ops.grpo_loss import dapo_normalizer
from liger_kernel.ops.utils import _apply_eagerly, _is_compiling, check_float, check_same_dtype
from liger_kernel.utils import use_triton


def _rows(t, seqs):
    """Rows ``seqs`` of a per-sequence tensor (None stays None)."""
    return None if t is None else t[seqs]


class LigerFusedLinearPPOBase(torch.autograd.Function):
    @classmethod
    def apply(cls, *args, **kwargs):
        if _is_compiling():
            return _apply_eagerly(cls, *args, **kwargs)
        caller_grad_mode.enabled = torch.is_grad_enabled()  # forward runs with grad mode off
        return super().apply(*args, **kwargs)

    @staticmethod
    def ppo_loss_fn(*args, **kwargs):
        """The subclass's loss on one chunk's ``[b, T]`` log-probs: ``(loss, metrics)``."""
        raise NotImplementedError("a LigerFusedLinearPPOBase subclass defines ppo_loss_fn")

    @staticmethod
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
        epsilon_low=0.2,
        epsilon_high=0.2,
        beta=0.04,
        loss_type="dapo",
        max_completion_length=None,
        importance_sampling_level="token",
        temperature=1.0,
        compiled=True,
        use_ref_model=False,
        chunk_size=1,
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
    ):
        """``_input`` [B, T, H] (or [B*T, H]), ``weight`` [V, H], ``selected_token_ids`` and
        ``attention_mask`` (the loss mask) [B, T], ``advantages`` [B] (or [B, T]); log-prob
        tensors [B, T]; ``vllm_is_ratio`` [B, T] or [B, 1]. Returns ``(loss, metrics)`` in fp32 (from
        fp32 log-probs, not rounded to the input's dtype; float64 for float64 inputs)."""
        ids, mask = selected_token_ids, attention_mask
        x = _check_inputs(_input, weight, bias, ids, mask, temperature)
        n_seqs, seq_len = ids.shape
        keep = mask.bool()
        safe_ids = torch.where(keep, ids, 0).reshape(-1)  # masked tokens never count: any id is fine
        if beta != 0.0 and ref_per_token_logps is None and use_ref_model and ref_weight is not None:
            ref_x = x if ref_input is None else ref_input.reshape(-1, ref_input.shape[-1])
            dtype = one_pass_logits_dtype(x, temperature)  # the policy's logits, as the engine computes them
            ref_per_token_logps = frozen_head_logprobs(ref_x, ref_weight, safe_ids, ref_bias, temperature, -100, dtype)
            ref_per_token_logps = ref_per_token_logps.view(n_seqs, seq_len)
        options = dict(
            epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta, loss_type=loss_type,
            max_completion_length=max_completion_length, importance_sampling_level=importance_sampling_level,
            ppo_loss_fn=cls.ppo_loss_fn, sapo_temperature_pos=sapo_temperature_pos,
            sapo_temperature_neg=sapo_temperature_neg, delta=delta, use_bias_correction_kl=use_bias_correction_kl,
            vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg,
        )  # fmt: skip
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        if num_items_in_batch is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            # the all-reduced token count once, not one collective per chunk (chunk counts may differ by rank)
            num_items_in_batch = dapo_normalizer(mask) * torch.distributed.get_world_size()
        options["num_items_in_batch"] = num_items_in_batch

        def head(logp, seqs):
            return LigerFusedLinearPPOBase._compute_loss_from_logps(
                logp, mask[seqs], advantages[seqs], _rows(ref_per_token_logps, seqs),
                _rows(old_per_token_logps, seqs), _rows(vllm_is_ratio, seqs), full_attention_mask=mask, **options,
            )  # fmt: skip

        grad_on = caller_grad_mode.enabled
        needs = tuple(grad_on and ctx.needs_input_grad[i] for i in (0, 1, 5))
        needs = (needs[0], needs[1], needs[2] and bias is not None)
        w = weight.contiguous()
        b = None if bias is None else bias.contiguous()
        loss, metrics, grad_x, grad_w, grad_b = logps_and_grads(x, w, safe_ids, b, temperature, seq_len, head, needs)
        ctx.grads = (None if grad_x is None else grad_x.view(_input.shape), grad_w, grad_b)
        ctx.mark_non_differentiable(*metrics)
        return loss, metrics

    @staticmethod
    def backward(ctx, grad_output, *grad_metrics):
        """The gradients of ``_input``, ``weight`` and ``bias`` saved by the forward, times
        ``grad_output`` (a scalar) in place: ``(grad_input, grad_weight, None, None, None,
        grad_bias)``. A factor other than 1 or a power of two rounds the bf16 gradients a second
        time, as in Liger Kernel 0.8.5 (keeping the fp32 accumulator until backward would hold
        2.1 GB more through the model's backward)."""
        grads, ctx.grads = ctx.grads, None
        for g in grads:
            if g is None:
                continue
            if use_triton(g):  # in place; exactly 1 detected on the device (no sync, no copy)
                scale_by_upstream(g.view(-1, g.shape[-1]) if g.dim() > 1 else g, grad_output, per_row=False)
            else:
                g.mul_(grad_output.to(g.dtype))
        return grads[0], grads[1], None, None, None, grads[2]

    @staticmethod
    def _compute_dapo_normalizer(attention_mask, num_items_in_batch=None):
        """The dapo/cispo/vespo normalizer: active tokens per process, at least 1
        (``num_items_in_batch / world_size`` when given, else the mask's sum over every process
        over the world size)."""
        return dapo_normalizer(attention_mask, num_items_in_batch)

    @staticmethod
    def _compute_loss_from_logps(
        per_token_logps,
        attention_mask_chunk,
        advantages_chunk,
        ref_per_token_logps_chunk=None,
        old_per_token_logps_chunk=None,
        vllm_is_ratio_chunk=None,
        full_attention_mask=None,
        epsilon_low=0.2,
        epsilon_high=0.2,
        beta=0.04,
        loss_type="dapo",
        max_completion_length=None,
        importance_sampling_level="token",
        ppo_loss_fn=None,
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        delta=None,
        use_bias_correction_kl=False,
        vespo_k_pos=2.0,
        vespo_lambda_pos=3.0,
        vespo_k_neg=3.0,
        vespo_lambda_neg=2.0,
        num_items_in_batch=None,
    ):
        """``ppo_loss_fn`` on one chunk of whole sequences' ``[b, T]`` log-probs; ``(loss, metrics)``
        normalized by ``full_attention_mask`` (the chunk's own mask when None)."""
        return ppo_loss_fn(
            per_token_logps=per_token_logps,
            attention_mask=attention_mask_chunk,
            advantages=advantages_chunk,
            full_attention_mask=attention_mask_chunk if full_attention_mask is None else full_attention_mask,
            ref_per_token_logps=ref_per_token_logps_chunk,
            old_per_token_logps=old_per_token_logps_chunk,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
            beta=beta,
            loss_type=loss_type,
            max_completion_length=max_completion_length,
            importance_sampling_level=importance_sampling_level,
            sapo_temperature_pos=sapo_temperature_pos,
            sapo_temperature_neg=sapo_temperature_neg,
            vllm_is_ratio=vllm_is_ratio_chunk,
            delta=delta,
            use_bias_correction_kl=use_bias_correction_kl,
            vespo_k_pos=vespo_k_pos,
            vespo_lambda_pos=vespo_lambda_pos,
            vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg,
            num_items_in_batch=num_items_in_batch,
        )

    @staticmethod
    def chunk_forward(input_chunk, weight, selected_token_ids, bias=None, temperature=1.0):
        """Per-token log-probs ``[b, T]`` (fp32, differentiable) of ``selected_token_ids`` [b, T]
        from ``input_chunk`` [b, T, H], without the logits."""
        flat = input_chunk.reshape(-1, input_chunk.shape[-1])
        logp = fused_linear_logprobs(flat, weight, selected_token_ids.reshape(-1), bias, temperature)
        return logp.view(selected_token_ids.shape)


def _check_inputs(_input, weight, bias, ids, mask, temperature):
    """``_input`` as contiguous rows [B*T, H] once the shapes agree; errors name the argument."""
    check_float("input", _input)
    check_float("weight", weight)
    check_same_dtype(input=_input, weight=weight, bias=bias)
    if ids.dim() != 2:
        raise ValueError(f"`selected_token_ids` must be [B, T], got {tuple(ids.shape)}.")
    if mask.shape != ids.shape:
        raise ValueError(
            f"`attention_mask` (the completion's loss mask) must be [B, T] = {tuple(ids.shape)}, "
            f"got {tuple(mask.shape)}."
        )
    if weight.dim() != 2 or _input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"`weight` must be [V, H] with H = input.shape[-1] = {_input.shape[-1]}; got {tuple(weight.shape)}."
        )
    if _input.numel() // max(_input.shape[-1], 1) != ids.numel():
        raise ValueError(
            f"`_input` must hold one hidden state per completion token: [B, T, H] with [B, T] = {tuple(ids.shape)}; "
            f"got {tuple(_input.shape)}."
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"`bias` must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if (((ids < 0) | (ids >= weight.shape[0])) & mask.bool()).any():  # one sync
        raise ValueError(f"`selected_token_ids` must be in [0, {weight.shape[0]}) where `attention_mask` is set.")
    return _input.reshape(-1, _input.shape[-1]).contiguous()
