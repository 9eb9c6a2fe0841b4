"""Cross-entropy of vocabulary-parallel logits (tensor parallel): each rank of ``tp_group`` holds
the logits ``[..., V_r]`` of its own slice of the vocabulary (slices in rank order), and no rank
ever holds a full ``[N, V]`` row.

Per token: each rank takes its slice's max, one all-reduce (MAX) gives the row max ``m``; each rank
sums ``exp(z - m)`` over its slice and reads the label's logit when it owns the label (0
otherwise), plus the smoothing sum ``sum_c w_c z_c`` and the entropy sum ``sum_c exp(z_c - m) z_c``
when asked; one all-reduce (SUM) of these ``[k, N]`` rows gives ``lse = m + log(sum)``, the label
logit and the sums. The loss per token and its gradient coefficients then come from ``row_terms``
(ops/fused_linear_cross_entropy.py, the single-GPU op's math), and each rank writes its own
slice's gradient locally: ``coef_p * exp(z - lse) - coef_y [c == y] - coef_smooth w_c``. Two
all-reduces of ``[N]``-sized rows per call; everything in fp32.

``LigerVocabParallelCEFunction`` (logits given) follows Megatron's vocabulary-parallel
cross-entropy options: ``label_smoothing_formula`` "pytorch" (``F.cross_entropy``'s
``(1 - eps) nll + eps * mean_c(-log p_c)``) or "megatron" (the same with ``eps V / (V - 1)``), the
mean taken over the whole vocabulary (``label_smoothing_mode="global"``) or, as Megatron does, over
the rank's own slice only (``"partition"``, ``V`` then the slice's size; each rank's loss differs).
"""

from typing import NamedTuple

import torch
import torch.distributed as dist

from liger_kernel.ops.cross_entropy import CEOptions, bad_label_message
from liger_kernel.ops.fused_linear_cross_entropy import RowTerms, row_terms
from liger_kernel.ops.utils import check_float

FORMULAS = ("pytorch", "megatron")
MODES = ("global", "partition")


def validate_formula_and_mode(label_smoothing_formula, label_smoothing_mode):
    """Raise a ValueError naming the argument unless both are known."""
    if label_smoothing_formula not in FORMULAS:
        raise ValueError(f"`label_smoothing_formula` must be one of {FORMULAS}, got {label_smoothing_formula!r}.")
    if label_smoothing_mode not in MODES:
        raise ValueError(f"`label_smoothing_mode` must be one of {MODES}, got {label_smoothing_mode!r}.")


def vocab_slice(n_local: int, group, device) -> tuple[int, int]:
    """``(start, total)``: this rank's first vocabulary index and the whole vocabulary's size, from
    every rank's slice size (one all-gather of an int; slices may be uneven)."""
    size = torch.tensor([n_local], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    sizes = torch.cat(sizes).tolist()
    return sum(sizes[: dist.get_rank(group)]), sum(sizes)


def local_labels(target, ignore_index: int, start: int, n_local: int, n_vocab: int):
    """``(mask, y_safe, label_local)`` for flat labels: non-ignored tokens, labels with 0 at ignored
    tokens, and each label's column in this rank's slice (-1 where another rank owns it or it is
    ignored). Raises on a label outside ``[0, n_vocab)`` that is not ``ignore_index``."""
    mask = target != ignore_index
    if (mask & ((target < 0) | (target >= n_vocab))).any():
        raise ValueError(bad_label_message(n_vocab, ignore_index))
    y_safe = torch.where(mask, target, 0)
    owned = mask & (target >= start) & (target < start + n_local)
    return mask, y_safe, torch.where(owned, target - start, -1)


class ShardStats(NamedTuple):
    """Per-token fp32 ``[n]`` rows, whole-vocabulary values: log-sum-exp, label logit, smoothing sum
    (None unless asked), entropy ``lse - sum_c p_c z_c`` (None unless asked)."""

    lse: torch.Tensor
    z_label: torch.Tensor
    smooth: torch.Tensor | None
    entropy: torch.Tensor | None


def shard_stats(z, label_local, group, smooth_weight=None, smoothing=False, entropy=False) -> ShardStats:
    """``ShardStats`` of the fp32 logits ``z`` [n, V_r] of this rank's slice (the module docstring's
    two all-reduces). ``smooth_weight``: this slice's class weights [V_r] for the smoothing sum."""
    m = z.amax(-1) if z.shape[1] else torch.full(z.shape[:1], -torch.inf, device=z.device)
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = torch.where(torch.isfinite(m), m, 0.0)  # all -inf rows: lse -inf, as logsumexp gives
    e = torch.exp(z - m[:, None])
    owned = label_local >= 0
    z_label = torch.where(owned, z.gather(1, label_local.clamp(min=0)[:, None]).squeeze(1), 0.0)
    rows = [e.sum(-1), z_label]
    if smoothing:
        rows.append(z.sum(-1) if smooth_weight is None else z @ smooth_weight)
    if entropy:
        rows.append((e * torch.where(e > 0, z, 0.0)).sum(-1))
    packed = torch.stack(rows)
    dist.all_reduce(packed, group=group)
    lse = m + torch.log(packed[0])
    smooth = packed[2] if smoothing else None
    return ShardStats(lse, packed[1], smooth, lse - packed[-1] / packed[0] if entropy else None)


def shard_dlogits(z, label_local, terms, smooth_weight=None, softcap=None):
    """dloss/dz for this slice's fp32 logits ``z`` [n, V_r] (softcapped by ``softcap`` when given:
    the derivative of the cap is applied), from ``row_terms``' ``RowTerms``."""
    g = terms.coef_p[:, None] * torch.exp(z - terms.lse[:, None])
    owned = torch.nonzero(label_local >= 0).squeeze(1)
    g[owned, label_local[owned]] -= terms.coef_y[owned]
    if smooth_weight is None:
        g -= terms.coef_smooth[:, None]
    else:
        g -= terms.coef_smooth[:, None] * smooth_weight[None, :]
    if softcap is not None:
        g *= 1.0 - (z / softcap).square()
    return g


def smoothing_setup(n_local, n_vocab, label_smoothing, formula, mode):
    """``(eps, n_smooth)``: the smoothing weight the formula gives and the number of classes its
    mean runs over."""
    n_smooth = n_vocab if mode == "global" else n_local
    eps = label_smoothing
    if formula == "megatron" and eps > 0:
        eps = eps * n_smooth / (n_smooth - 1)
    return eps, n_smooth


class LigerVocabParallelCEFunction(torch.autograd.Function):
    """Per-token cross-entropy [target shape] of vocabulary-parallel logits ``[..., V_r]``; the
    gradient is written only for this rank's slice (the module docstring's math)."""

    @staticmethod
    def forward(
        ctx,
        vocab_parallel_logits,
        target,
        tp_group=None,
        ignore_index=-100,
        label_smoothing=0.0,
        label_smoothing_formula="pytorch",
        label_smoothing_mode="global",
    ):
        validate_formula_and_mode(label_smoothing_formula, label_smoothing_mode)
        CEOptions(ignore_index=ignore_index, label_smoothing=label_smoothing).check()
        check_float("vocab_parallel_logits", vocab_parallel_logits)
        n_local = vocab_parallel_logits.shape[-1]
        if target.shape != vocab_parallel_logits.shape[:-1]:
            raise ValueError(
                f"`target` must have the logits' shape without the last dim, {tuple(vocab_parallel_logits.shape[:-1])}"
                f", got {tuple(target.shape)}."
            )
        group = tp_group or dist.group.WORLD
        z = vocab_parallel_logits.reshape(-1, n_local).float()
        start, n_vocab = vocab_slice(n_local, group, z.device)
        mask, y_safe, label_local = local_labels(target.reshape(-1), ignore_index, start, n_local, n_vocab)
        eps, n_smooth = smoothing_setup(
            n_local, n_vocab, label_smoothing, label_smoothing_formula, label_smoothing_mode
        )
        stats = shard_stats(z, label_local, group, smoothing=eps > 0 and label_smoothing_mode == "global")
        smooth = stats.smooth if label_smoothing_mode == "global" or eps == 0 else z.sum(-1)
        opts = CEOptions(ignore_index=ignore_index, label_smoothing=eps, reduction="none")
        norm = torch.ones(1, device=z.device)
        args = (stats.lse, stats.z_label, smooth, y_safe, label_local, mask, None, None, norm, opts, n_smooth)
        loss, _, terms = row_terms(*args)
        ctx.save_for_backward(vocab_parallel_logits, label_local, *terms)
        return loss.view(target.shape).to(vocab_parallel_logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, label_local, *terms = ctx.saved_tensors
        terms = RowTerms(*terms)
        z = logits.reshape(-1, logits.shape[-1]).float()
        grad = shard_dlogits(z, label_local, terms.times(grad_loss.reshape(-1).float()))
        return grad.view(logits.shape).to(logits.dtype), None, None, None, None, None, None


def vocab_parallel_cross_entropy_reference(
    logits, target, ignore_index=-100, label_smoothing=0.0, label_smoothing_formula="pytorch", n_local=None
):
    """The spec on the whole logits [..., V] in one process: per-token loss in the logits' dtype.
    ``n_local``: the slice size when the smoothing mean runs over one slice ("partition" mode);
    the rank's slice is then ``logits[..., start:start + n_local]``, given as ``n_local=(start, size)``."""
    z = logits.float().reshape(-1, logits.shape[-1])
    y = target.reshape(-1)
    mask = y != ignore_index
    logp = torch.log_softmax(z, -1)
    nll = -logp.gather(1, torch.where(mask, y, 0)[:, None]).squeeze(1)
    if n_local is not None:
        start, size = n_local
        logp = logp[:, start : start + size]
    n_smooth = logp.shape[1]
    eps = label_smoothing
    if label_smoothing_formula == "megatron" and eps > 0:
        eps = eps * n_smooth / (n_smooth - 1)
    loss = (1 - eps) * nll - eps * logp.mean(-1)
    return torch.where(mask, loss, 0.0).view(target.shape).to(logits.dtype)
