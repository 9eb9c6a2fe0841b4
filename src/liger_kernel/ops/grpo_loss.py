"""GRPO and its variants: the loss head on per-token log-probabilities, and the Triton op on
materialized logits (``GrpoLossFunction``, ``fused_selective_log_softmax``).

The head is plain PyTorch on ``[B, T]`` tensors and is the spec of every GRPO path here: TRL's
``GRPOTrainer._compute_loss`` (trl 1.16, trl/trainer/grpo_trainer.py) for the loss types grpo,
bnpo, dr_grpo, dapo, cispo, sapo, vespo and luspo, token- or sequence-level importance sampling,
the k3 KL to a reference (``beta``), two-sided clipping (``delta``) and vLLM importance-sampling
ratios. The fused-head loss (``chunked_loss.grpo_loss``) and the op below both run it and
differentiate it with autograd on ``[B, T]`` values; the vocabulary-wide part of the gradient is
``g (onehot - softmax) / temperature`` per token, ``g = dloss/dlogp``.

Tokens outside the mask never contribute, even where ``old``/``ref`` log-probs or vLLM ratios are
non-finite there: they are replaced by neutral values before any arithmetic (a product with a
0 mask would still give NaN, and NaN gradients).

``GrpoLossFunction`` on logits ``[B, T(+1), V]``: one Triton pass writes each token's
log-probability and log-sum-exp (fp32, online over the vocabulary), the head runs on ``[B, T]``,
and the backward pass writes ``dlogits`` per row from the saved log-sum-exp. The last position of
``[B, T+1, V]`` logits (the prediction after the completion, as TRL computes them) gets a zero
gradient.
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import finish_logsumexp, online_logsumexp_step
from liger_kernel.ops.fused_linear_logprobs import divide, reciprocal_parts
from liger_kernel.ops.library import _TWINS, is_compiling
from liger_kernel.ops.utils import fallback_backward, fallback_forward, next_power_of_2
from liger_kernel.utils import use_triton

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo")
CLIPPED_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
IS_LEVELS = ("token", "sequence")


class GRPOOptions(NamedTuple):
    """The loss options, built once from a public entry's arguments."""

    loss_type: str = "dapo"
    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    importance_sampling_level: str = "token"
    max_completion_length: int | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    delta: float | None = None
    use_bias_correction_kl: bool = False
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def check(self) -> "GRPOOptions":
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if self.importance_sampling_level not in IS_LEVELS:
            raise ValueError(
                f"`importance_sampling_level` must be 'token' or 'sequence', got {self.importance_sampling_level!r}."
            )
        if self.loss_type == "dr_grpo" and not self.max_completion_length:
            raise ValueError(
                "loss_type='dr_grpo' divides by batch size x `max_completion_length`: pass max_completion_length "
                "(the generation limit, as TRL's GRPOConfig.max_completion_length)."
            )
        return self


class GRPONorm(NamedTuple):
    """Whole-batch normalizers, known before any chunk runs: sequences, masked tokens (>= 1) and
    the dapo/cispo/vespo normalizer."""

    n_seqs: int
    n_tokens: torch.Tensor
    dapo: torch.Tensor


def dapo_normalizer(mask: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Active tokens per process, at least 1: ``num_items_in_batch / world_size`` when given (TRL
    passes the count over the whole generation batch), else this batch's mask summed over every
    process (all-reduce when ``torch.distributed`` is initialized) over the world size."""
    world = 1
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if num_items_in_batch is not None:
        total = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=mask.device)
    else:
        total = mask.to(torch.float32).sum()
        if world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world).clamp(min=1.0)


def grpo_norm(mask: torch.Tensor, num_items_in_batch=None) -> GRPONorm:
    return GRPONorm(
        mask.shape[0], mask.to(torch.float32).sum().clamp(min=1.0), dapo_normalizer(mask, num_items_in_batch)
    )


# ----------------------------------------------------------------------------- the head (plain PyTorch)


def k3_loss_fn(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``exp(log_p - log_q) - (log_p - log_q) - 1`` (>= 0): Schulman's k3 estimate of KL(q || p)
    from samples of q. GRPO calls it with (reference, policy) log-probs."""
    diff = log_p - log_q
    return torch.exp(diff) - diff - 1


def clip_coef_fn(coef: torch.Tensor, epsilon_low: float, epsilon_high: float, loss_type: str):
    """The clipped importance ratio and where it was clipped below / above:
    ``(clipped, is_low_clipped, is_high_clipped)``. cispo caps the ratio at ``epsilon_high``
    (MiniMax-M1: the cap itself, not ``1 + epsilon_high``); the others clamp it to
    ``[1 - epsilon_low, 1 + epsilon_high]``."""
    if loss_type == "cispo":
        return coef.clamp(max=epsilon_high), torch.zeros_like(coef, dtype=torch.bool), coef > epsilon_high
    low, high = 1 - epsilon_low, 1 + epsilon_high
    return coef.clamp(low, high), coef < low, coef > high


def sapo_loss_fn(importance_ratio: torch.Tensor, temperature) -> torch.Tensor:
    """SAPO's soft gate replacing the clipped ratio: ``sigmoid(tau (r - 1)) * 4 / tau`` (1 at r = 1,
    slope 1 there); the per-token loss is minus this times the advantage."""
    return torch.sigmoid(temperature * (importance_ratio - 1)) * 4 / temperature


@torch.no_grad()
def get_gamma_weights(
    advantages,
    log_ratio_per_token,
    mask,
    importance_sampling_ratio=None,
    k_pos=2.0,
    lambda_pos=3.0,
    k_neg=3.0,
    lambda_neg=2.0,
):
    """VESPO's per-sequence weight ``phi(w) = exp(lambda + k log w - lambda w)`` (``phi(1) = 1``) of
    the sequence importance ratio ``w = prod_t pi/pi_old`` (times the vLLM ratios when given),
    ``(k, lambda)`` by the advantage's sign; a constant for the gradient. ``[B, 1]``; TRL's
    ``GRPOTrainer.get_gamma_weights`` (clamps as there: log-ratios to [-20, 20], log w to
    [log 1e-8, 20], non-finite phi to 0)."""
    lower = math.log(1e-8)
    seq_log_ratio = (log_ratio_per_token.clamp(-20.0, 20.0) * mask).sum(-1, keepdim=True)
    if importance_sampling_ratio is not None:
        seq_log_ratio = seq_log_ratio + importance_sampling_ratio.log().clamp(lower, 20.0).sum(-1, keepdim=True)
    log_w = seq_log_ratio.clamp(lower, 20.0)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def as_rows(t, batch):
    """``[B]`` -> ``[B, 1]``; ``[B, 1]`` and ``[B, T]`` as they are."""
    return t.reshape(batch, 1) if t.dim() == 1 else t


def _neutral_outside(mask, logp, old, ref, vllm_is_ratio):
    """The inputs with neutral values outside the mask (log-probs 0, per-token ratios 1), so
    nothing there can turn into NaN; ``old`` None is the detached ``logp`` (on-policy)."""
    keep = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(keep, logp, zero)
    old = logp.detach() if old is None else torch.where(keep, old.to(logp.dtype), zero)
    ref = None if ref is None else torch.where(keep, ref.to(logp.dtype), zero)
    if vllm_is_ratio is not None:
        vllm_is_ratio = as_rows(vllm_is_ratio, logp.shape[0]).to(logp.dtype)
        if vllm_is_ratio.shape[-1] == logp.shape[-1]:  # per token; a [B, 1] sequence ratio stays one value
            vllm_is_ratio = torch.where(keep, vllm_is_ratio, zero + 1)
    return logp, old, ref, vllm_is_ratio


def vespo_weights(logp, mask, advantages, old, vllm_is_ratio, opts: GRPOOptions):
    """VESPO's ``[B, 1]`` ``phi_seq`` (``get_gamma_weights``) from ``[B, T]`` log-probs."""
    logp, old, _, vllm_is_ratio = _neutral_outside(mask, logp.detach(), old, None, vllm_is_ratio)
    adv = as_rows(advantages, logp.shape[0]).to(logp.dtype)
    return get_gamma_weights(
        adv, logp - old, mask.to(logp.dtype), vllm_is_ratio, opts.vespo_k_pos, opts.vespo_lambda_pos,
        opts.vespo_k_neg, opts.vespo_lambda_neg,
    )  # fmt: skip


def per_token_terms(logp, mask, advantages, old, ref, vllm_is_ratio, opts: GRPOOptions, phi_seq=None):
    """TRL's per-token quantities on ``[b, T]`` log-probs: ``(per_token_loss [b, T] or [b, 1],
    per_token_kl [b, T] or None, is_clipped [b, T] or [b, 1] bool)``, before masking and
    reduction."""
    if opts.loss_type == "vespo" and phi_seq is None:
        phi_seq = vespo_weights(logp, mask, advantages, old, vllm_is_ratio, opts)
    logp, old, ref, vllm_is_ratio = _neutral_outside(mask, logp, old, ref, vllm_is_ratio)
    adv = as_rows(advantages, logp.shape[0]).to(logp.dtype)
    mask = mask.to(logp.dtype)
    log_ratio = logp - old
    if opts.importance_sampling_level == "sequence":
        log_ratio_used = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    else:
        log_ratio_used = log_ratio
    coef_1 = torch.exp(log_ratio_used)
    kl = None
    if opts.beta != 0.0:
        if ref is None:
            raise ValueError(
                "beta != 0 needs the reference log-probs: pass `ref_per_token_logps` (`ref_logp` for "
                "triton_grpo_loss; or `ref_input` and `ref_weight` with use_ref_model=True for the fused-head "
                "loss), or set beta=0."
            )
        kl = k3_loss_fn(ref, logp)
        if opts.use_bias_correction_kl:
            kl = kl * coef_1
    no_clip = torch.zeros_like(coef_1, dtype=torch.bool)
    if opts.loss_type == "cispo":
        capped, _, high = clip_coef_fn(coef_1, opts.epsilon_low, opts.epsilon_high, "cispo")
        loss = -capped.detach() * adv * logp
        is_clipped = high & (adv > 0)
    elif opts.loss_type in CLIPPED_TYPES:
        coef_2, _, _ = clip_coef_fn(coef_1, opts.epsilon_low, opts.epsilon_high, opts.loss_type)
        if opts.delta is not None:
            coef_1 = coef_1.clamp(max=opts.delta)
        loss = -torch.min(coef_1 * adv, coef_2 * adv)
        is_clipped = ((coef_1 < 1 - opts.epsilon_low) & (adv < 0)) | ((coef_1 > 1 + opts.epsilon_high) & (adv > 0))
    elif opts.loss_type == "sapo":
        tau = torch.where(adv > 0, opts.sapo_temperature_pos, opts.sapo_temperature_neg).to(logp.dtype)
        loss = -sapo_loss_fn(coef_1, tau) * adv
        is_clipped = no_clip
    else:  # vespo
        loss = -phi_seq.to(logp.dtype) * adv * logp
        is_clipped = no_clip
    if vllm_is_ratio is not None and opts.loss_type != "vespo":
        loss = loss * vllm_is_ratio
    if kl is not None:
        loss = loss + opts.beta * kl
    return loss, kl, is_clipped


def reduce_terms(per_token_loss, kl, is_clipped, mask, opts: GRPOOptions, norm: GRPONorm):
    """The chunk's share of the loss and metrics, each divided by the whole batch's normalizers
    (so chunk values add up): ``(loss, (kl_mean,) if beta != 0 else () + (clip_ratio,))``. The
    loss per ``loss_type`` as TRL reduces it; ``kl_mean`` over masked tokens; ``clip_ratio`` over
    masked tokens (over sequences at sequence level), 0 for sapo and vespo (no hard clip)."""
    mask = mask.to(per_token_loss.dtype)
    summed = per_token_loss * mask
    if opts.loss_type in ("grpo", "sapo"):
        loss = (summed.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / norm.n_seqs
    elif opts.loss_type == "bnpo":
        loss = summed.sum() / norm.n_tokens
    elif opts.loss_type == "dr_grpo":
        loss = summed.sum() / (norm.n_seqs * opts.max_completion_length)
    elif opts.loss_type == "luspo":
        loss = summed.sum() / norm.n_seqs
    else:
        loss = summed.sum() / norm.dapo
    metrics = ()
    if kl is not None:
        metrics += ((kl.detach() * mask).sum() / norm.n_tokens,)
    clipped = is_clipped.to(per_token_loss.dtype)
    if clipped.shape[-1] == 1 and mask.shape[-1] != 1:
        metrics += (clipped.sum() / norm.n_seqs,)
    else:
        metrics += ((clipped * mask).sum() / norm.n_tokens,)
    return loss, metrics


def grpo_loss_from_logps(
    logp, mask, advantages, old, ref, vllm_is_ratio, opts: GRPOOptions, norm: GRPONorm, phi_seq=None
):
    """``(loss, metrics)`` of ``reduce_terms`` from ``[b, T]`` log-probs."""
    loss, kl, is_clipped = per_token_terms(logp, mask, advantages, old, ref, vllm_is_ratio, opts, phi_seq)
    return reduce_terms(loss, kl, is_clipped, mask, opts, norm)


# ----------------------------------------------------------------------------- kernels on logits


@triton.jit
def _selective_logsoftmax_kernel(
    logits_ptr,  # [B, L, V], unit vocabulary stride
    stride_b,
    stride_l,
    ids_ptr,  # [B, T] int, in range
    logp_ptr,  # [B, T] fp32 out
    lse_ptr,  # [B, T] fp32 out: log-sum-exp of logits / temperature
    n_pos,
    n_vocab,
    inv_hi,  # 1 / temperature = inv_hi + inv_lo (reciprocal_parts)
    inv_lo,
    BLOCK: tl.constexpr,
):
    """One token per program: an online log-sum-exp of ``logits / temperature`` over the vocabulary."""
    row = tl.program_id(0).to(tl.int64)
    b = row // n_pos
    t = row % n_pos
    base = logits_ptr + b * stride_b + t * stride_l
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -1e30, tl.float32)
    d = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_vocab, BLOCK):
        cols = start + offs
        z = divide(tl.load(base + cols, mask=cols < n_vocab, other=float("-inf")).to(tl.float32), inv_hi, inv_lo)
        m, d = online_logsumexp_step(z, m, d)
    lse = finish_logsumexp(m, d)
    z_id = divide(tl.load(base + tl.load(ids_ptr + row)).to(tl.float32), inv_hi, inv_lo)
    tl.store(logp_ptr + row, z_id - lse)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _logits_grad_kernel(
    logits_ptr,  # [B, L, V], unit vocabulary stride
    stride_b,
    stride_l,
    grad_ptr,  # [B, L, V] out, contiguous
    ids_ptr,  # [B, T]
    lse_ptr,  # [B, T] fp32
    g_ptr,  # [B, T] fp32: dloss/dlogp
    n_pos,  # T
    n_len,  # L (T or T + 1)
    n_vocab,
    inv_hi,  # 1 / temperature = inv_hi + inv_lo (reciprocal_parts)
    inv_lo,
    BLOCK: tl.constexpr,
):
    """``dlogits = g (onehot - softmax(logits / temperature)) / temperature`` for one position per
    program; positions >= T (the last one of [B, T+1, V] logits) get zeros."""
    row = tl.program_id(0).to(tl.int64)
    b = row // n_len
    t = row % n_len
    base = logits_ptr + b * stride_b + t * stride_l
    out = grad_ptr + row * n_vocab
    inside = t < n_pos
    tok = b * n_pos + tl.minimum(t, n_pos - 1)
    g = divide(tl.where(inside, tl.load(g_ptr + tok), 0.0), inv_hi, inv_lo)
    lse = tl.where(inside, tl.load(lse_ptr + tok), 0.0)
    label = tl.where(inside, tl.load(ids_ptr + tok), -1)
    for start in range(0, n_vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_vocab
        z = divide(tl.load(base + cols, mask=mask, other=0.0).to(tl.float32), inv_hi, inv_lo)
        grad = tl.where(cols == label, g, 0.0) - g * tl.exp(z - lse)
        grad = tl.where(inside, grad, 0.0)
        tl.store(out + cols, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _vocab_block(n_vocab):
    return min(4096, next_power_of_2(n_vocab))


def logsoftmax_stats(logits, ids, temperature):
    """Per-token ``(logp, lse)`` [B, T] fp32 of ``logits[:, :T]`` (unit vocabulary stride)."""
    batch, n_pos = ids.shape
    logp = torch.empty(batch, n_pos, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)
    if logp.numel():
        _selective_logsoftmax_kernel[(batch * n_pos,)](
            logits, logits.stride(0), logits.stride(1), ids, logp, lse, n_pos, logits.shape[2],
            *reciprocal_parts(temperature), BLOCK=_vocab_block(logits.shape[2]), num_warps=8,
        )  # fmt: skip
    return logp, lse


def logits_grad(logits, ids, lse, g, temperature):
    """``dloss/dlogits`` [B, L, V] in the logits' dtype for ``g = dloss/dlogp`` [B, T]."""
    batch, n_len, n_vocab = logits.shape
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if grad.numel():
        _logits_grad_kernel[(batch * n_len,)](
            logits, logits.stride(0), logits.stride(1), grad, ids, lse, g.to(torch.float32).contiguous(),
            ids.shape[1], n_len, n_vocab, *reciprocal_parts(temperature), BLOCK=_vocab_block(n_vocab), num_warps=8,
        )  # fmt: skip
    return grad


def check_logits(logits, ids):
    """``logits`` [B, T or T+1, V] float with unit vocabulary stride; ``ids`` [B, T] in range."""
    if logits.dim() != 3 or ids.dim() != 2 or logits.shape[0] != ids.shape[0]:
        raise ValueError(
            f"`logits` must be [B, T+1, V] (or [B, T, V]) and `completion_ids`/`input_ids` [B, T]; got "
            f"{tuple(logits.shape)} and {tuple(ids.shape)}."
        )
    if logits.shape[1] not in (ids.shape[1], ids.shape[1] + 1):
        raise ValueError(
            f"`logits` has {logits.shape[1]} positions for {ids.shape[1]} token ids: expected T+1 (TRL's logits, "
            "the last position dropped) or T."
        )
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a float tensor, got {logits.dtype}.")
    if ((ids < 0) | (ids >= logits.shape[2])).any():  # one sync
        raise ValueError(f"token ids must be in [0, {logits.shape[2]}) (the vocabulary of `logits`).")
    return logits if logits.stride(2) == 1 else logits.contiguous()


# ----------------------------------------------------------------------------- selective log-softmax


def selective_log_softmax_reference(logits, input_ids, temperature=0.9, mask=None):
    """The spec: ``log_softmax(logits[:, :T] / temperature)`` (fp32) at ``input_ids``, 0 where
    ``mask`` is 0; fp32 ``[B, T]``."""
    n_pos = input_ids.shape[1]
    z = logits[:, :n_pos].to(torch.promote_types(logits.dtype, torch.float32))
    logp = torch.log_softmax(z / temperature, -1)
    logp = logp.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1)
    return logp if mask is None else torch.where(mask.bool(), logp, 0.0)


class SelectiveLogSoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, input_ids, temperature, mask):
        logp, lse = logsoftmax_stats(logits, input_ids, temperature)
        if mask is not None:
            logp = torch.where(mask.bool(), logp, 0.0)
        ctx.temperature = temperature
        ctx.save_for_backward(logits, input_ids, lse, mask)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, ids, lse, mask = ctx.saved_tensors
        g = grad_logp if mask is None else torch.where(mask.bool(), grad_logp, 0.0)
        return logits_grad(logits, ids, lse, g, ctx.temperature), None, None, None


def fused_selective_log_softmax(logits, input_ids, temperature=0.9, mask=None):
    """Log-probabilities of ``input_ids`` [B, T] under ``softmax(logits / temperature)`` from
    ``logits`` [B, T+1, V] (the last position dropped, as TRL computes them) or [B, T, V],
    without a ``[B, T, V]`` log-softmax: fp32 ``[B, T]``, 0 where ``mask`` is 0; differentiable
    in ``logits``. Under compile: the custom op of ``ops/library_losses.py``."""
    if is_compiling() and "fused_selective_log_softmax" in _TWINS:
        return _TWINS["fused_selective_log_softmax"](logits, input_ids, temperature, mask)
    logits = check_logits(logits, input_ids)
    if not use_triton(logits) or logits.dtype == torch.float64:
        return selective_log_softmax_reference(logits, input_ids, temperature, mask)
    return SelectiveLogSoftmaxFunction.apply(logits, input_ids.contiguous(), temperature, mask)


# ----------------------------------------------------------------------------- the op on logits


def _head(logp, completion_mask, advantages, old_logp, ref_logp, vllm_is_ratio, opts, norm, phi_seq, reduce):
    """The op's outputs from ``[B, T]`` log-probs: ``(loss, kl, clip)`` reduced (scalars; kl None
    at beta 0) or per token (``[B, T]`` loss and kl, 0 outside the mask, and is_clipped)."""
    loss, kl, is_clipped = per_token_terms(
        logp, completion_mask, advantages, old_logp, ref_logp, vllm_is_ratio, opts, phi_seq
    )
    if reduce:
        loss, metrics = reduce_terms(loss, kl, is_clipped, completion_mask, opts, norm)
        return loss, (metrics[0] if kl is not None else None), metrics[-1]
    mask = completion_mask.to(logp.dtype)
    per_token = loss.expand_as(logp) * mask
    return per_token, (None if kl is None else kl * mask), is_clipped.expand_as(logp).to(logp.dtype) * mask


def _prepare(logits, completion_ids, completion_mask, temperature, beta, eps_low, eps_high, loss_type,
             max_completion_length, importance_sampling_level, sapo_temperature_pos, sapo_temperature_neg, delta,
             use_bias_correction_kl, num_items_in_batch):  # fmt: skip
    """The checked logits, the options, the mask (ones when None) and the batch normalizers."""
    logits = check_logits(logits, completion_ids)
    opts = GRPOOptions(
        loss_type, beta, eps_low, eps_high, importance_sampling_level, max_completion_length, sapo_temperature_pos,
        sapo_temperature_neg, delta, use_bias_correction_kl,
    ).check()  # fmt: skip
    if completion_mask is None:
        completion_mask = torch.ones_like(completion_ids, dtype=torch.float32)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    return logits, opts, completion_mask, grpo_norm(completion_mask, num_items_in_batch)


def grpo_loss_reference(
    logits,
    old_logp,
    ref_logp,
    completion_ids,
    advantages,
    completion_mask,
    temperature,
    beta,
    eps_low,
    eps_high,
    inplace=False,
    loss_type="grpo",
    max_completion_length=None,
    reduce=True,
    importance_sampling_level="token",
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    vllm_is_ratio=None,
    delta=None,
    use_bias_correction_kl=False,
    num_items_in_batch=None,
    phi_seq=None,
):
    """The spec and CPU fallback of ``GrpoLossFunction``: ``log_softmax`` in fp32 on the logits,
    then the head; differentiable with autograd. ``inplace`` has no effect here."""
    logits, opts, mask, norm = _prepare(
        logits, completion_ids, completion_mask, temperature, beta, eps_low, eps_high, loss_type,
        max_completion_length, importance_sampling_level, sapo_temperature_pos, sapo_temperature_neg, delta,
        use_bias_correction_kl, num_items_in_batch,
    )  # fmt: skip
    logp = selective_log_softmax_reference(logits, completion_ids, temperature)
    return _head(logp, mask, advantages, old_logp, ref_logp, vllm_is_ratio, opts, norm, phi_seq, reduce)


class GrpoLossFunction(torch.autograd.Function):
    """The GRPO loss on materialized logits ``[B, T+1, V]`` (or ``[B, T, V]``): returns
    ``(loss, kl, clip)``, with ``reduce`` the loss, mean KL (None at beta 0) and clip ratio as
    scalars, else per token ``[B, T]`` (0 outside the mask). Math in the module docstring;
    arguments as TRL names them (``eps_low``/``eps_high``: the clip range, ``phi_seq``: VESPO's
    ``[B, 1]`` weights, computed from the log-probs when None). ``inplace`` is accepted for
    compatibility but the logits' gradient always goes to a new buffer: the caller may still
    read the logits (this package never writes a tensor autograd does not see)."""

    @staticmethod
    def forward(
        ctx,
        logits,
        old_logp,
        ref_logp,
        completion_ids,
        advantages,
        completion_mask,
        temperature,
        beta,
        eps_low,
        eps_high,
        inplace,
        loss_type="grpo",
        max_completion_length=None,
        reduce=True,
        importance_sampling_level="token",
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        vllm_is_ratio=None,
        delta=None,
        use_bias_correction_kl=False,
        num_items_in_batch=None,
        phi_seq=None,
    ):
        ctx.use_triton = use_triton(logits) and logits.dtype != torch.float64
        if not ctx.use_triton:
            args = (logits, old_logp, ref_logp, completion_ids, advantages, completion_mask, temperature, beta)
            rest = (eps_low, eps_high, inplace, loss_type, max_completion_length, reduce, importance_sampling_level)
            more = (sapo_temperature_pos, sapo_temperature_neg, vllm_is_ratio, delta, use_bias_correction_kl)
            outputs = fallback_forward(ctx, grpo_loss_reference, *args, *rest, *more, num_items_in_batch, phi_seq)
            ctx.mark_non_differentiable(outputs[2])
            return outputs
        logits, opts, mask, norm = _prepare(
            logits, completion_ids, completion_mask, temperature, beta, eps_low, eps_high, loss_type,
            max_completion_length, importance_sampling_level, sapo_temperature_pos, sapo_temperature_neg, delta,
            use_bias_correction_kl, num_items_in_batch,
        )  # fmt: skip
        ids = completion_ids.contiguous()
        logp, lse = logsoftmax_stats(logits, ids, temperature)
        head_args = (mask, advantages, old_logp, ref_logp, vllm_is_ratio, opts, norm, phi_seq, reduce)
        loss, kl, clip = _head(logp, *head_args)
        ctx.head_args, ctx.temperature = head_args, temperature
        ctx.save_for_backward(logits, ids, logp, lse)
        ctx.mark_non_differentiable(clip, *([kl] if reduce and kl is not None else []))
        return loss, kl, clip

    @staticmethod
    def backward(ctx, grad_loss, grad_kl, _grad_clip):
        if not ctx.use_triton:
            return fallback_backward(ctx, grad_loss, grad_kl, None)
        logits, ids, logp, lse = ctx.saved_tensors
        with torch.enable_grad():
            leaf = logp.detach().requires_grad_()
            loss, kl, _ = _head(leaf, *ctx.head_args)
            outs, grads = [loss], [grad_loss]
            if kl is not None and kl.requires_grad and grad_kl is not None:  # per-token kl; the mean is a metric
                outs.append(kl)
                grads.append(grad_kl)
            (g,) = torch.autograd.grad(outs, leaf, grads, allow_unused=True)
        g = torch.zeros_like(logp) if g is None else g
        grad_logits = logits_grad(logits, ids, lse, g, ctx.temperature)
        return (grad_logits,) + (None,) * 21
