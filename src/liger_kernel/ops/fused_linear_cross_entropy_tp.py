"""Fused linear cross-entropy with a column-sharded head (tensor parallel): each rank of
``tp_group`` holds rows ``[V_r, H]`` of the head's weight (its slice of the vocabulary, slices in
rank order) and the same input ``[N, H]``; the loss is that of the whole head, ``[N, V]`` logits
never exist anywhere, and no rank holds more than one token chunk of its own slice's logits.

Forward, over token chunks: ``z = (x_c @ W_r.T + b_r) / temperature`` (softcapped) in fp32, then
ops/vocab_parallel_cross_entropy.py's two all-reduces per chunk give each token's whole-vocabulary
log-sum-exp, label logit, smoothing and entropy sums; ``row_terms`` (the single-GPU op's math) the
loss, z-loss and gradient coefficients. Backward, over the same chunks: the logits again (one more
``2 N H V_r`` matmul: the gradient is exact for any upstream gradient, per token too), each rank's
``dlogits`` of its slice, ``grad_W_r = dlogits.T @ x``, and ``grad_x = sum_r dlogits_r @ W_r``
(all-reduced over the group: the input is replicated, and its gradient comes back whole on every
rank). Every option of the single-GPU loss, plus ``temperature`` and the per-token entropy.
"""

import torch
import torch.distributed as dist

from liger_kernel.ops.cross_entropy import CEOptions, label_stats, reduce_outputs
from liger_kernel.ops.fused_linear_cross_entropy import RowTerms, in_input_dtype, mm_fp32, row_terms, split_size
from liger_kernel.ops.utils import check_float
from liger_kernel.ops.vocab_parallel_cross_entropy import local_labels, shard_dlogits, shard_stats, vocab_slice

# fp32 logits of one token chunk of this rank's slice (and their exp beside them).
CHUNK_BUDGET_BYTES = 256 * 2**20


def chunk_logits(x_c, weight, bias, temperature, softcap):
    """``(raw, z)``: this slice's fp32 logits of a token chunk, and them over ``temperature``, softcapped."""
    raw = torch.empty(x_c.shape[0], weight.shape[0], dtype=torch.float32, device=x_c.device)
    mm_fp32(x_c, weight.t(), raw)
    if bias is not None:
        raw += bias
    z = raw / temperature
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return raw, z


def global_argmax(raw, start, group):
    """Each row's argmax over the whole vocabulary (the first one on ties, as ``torch.argmax``)."""
    value, index = raw.max(-1)
    values = [torch.empty_like(value) for _ in range(dist.get_world_size(group))]
    indices = [torch.empty_like(index) for _ in range(len(values))]
    dist.all_gather(values, value, group=group)
    dist.all_gather(indices, index + start, group=group)
    values, indices = torch.stack(values), torch.stack(indices)
    first = (values == values.amax(0)).to(torch.int8).argmax(0)  # slices are in vocabulary order
    return indices.gather(0, first[None]).squeeze(0)


class LigerFusedLinearScaledCrossEntropyTPFunction(torch.autograd.Function):
    """``apply(_input, weight, target, tp_group, temperature=1.0, ignore_index=-100,
    tiles_per_reduce=1, return_entropy=False, bias=None, ce_weight=None, opts=None)``: returns the
    4-tuple ``(loss, z_loss, token_accuracy, predicted_tokens)`` (as the single-GPU op) and the
    per-token entropy (None unless ``return_entropy``). ``opts``: the ``CEOptions`` (reduction,
    smoothing, z-loss, softcap, token scaling, extras); ``tiles_per_reduce`` is the peer's tuning
    knob and changes nothing here (chunks follow ``CHUNK_BUDGET_BYTES``)."""

    @staticmethod
    def forward(
        ctx,
        _input,
        weight,
        target,
        tp_group=None,
        temperature=1.0,
        ignore_index=-100,
        tiles_per_reduce=1,
        return_entropy=False,
        bias=None,
        ce_weight=None,
        opts=None,
    ):
        opts = (opts or CEOptions())._replace(ignore_index=ignore_index).check()
        check_float("input", _input)
        check_float("weight", weight)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if _input.shape[-1] != weight.shape[-1] or weight.dim() != 2:
            raise ValueError(
                f"`weight` must be [V_r, H] with the input's H={_input.shape[-1]}, got {tuple(weight.shape)}."
            )
        if target.shape != _input.shape[:-1]:
            raise ValueError(f"`target` must have shape {tuple(_input.shape[:-1])}, got {tuple(target.shape)}.")
        group = tp_group or dist.group.WORLD
        x = _input.reshape(-1, _input.shape[-1])
        y = target.reshape(-1)
        n_rows, n_local = x.shape[0], weight.shape[0]
        start, n_vocab = vocab_slice(n_local, group, x.device)
        if ce_weight is not None and ce_weight.shape != (n_vocab,):
            raise ValueError(
                f"`ce_weight` must be [V] = [{n_vocab}] (the whole vocabulary), got {tuple(ce_weight.shape)}."
            )
        mask, y_safe, label_local = local_labels(y, opts.ignore_index, start, n_local, n_vocab)
        w, _, norm, wsum = label_stats(y, ce_weight, opts.ignore_index, n_vocab)
        w_local = None if w is None else w[start : start + n_local]
        smoothing = opts.label_smoothing > 0
        want_pred = opts.return_token_accuracy or opts.return_predicted_tokens
        stats, preds = [], []
        rows = split_size(n_rows, max(n_local, 1) * 8, CHUNK_BUDGET_BYTES)
        for c0 in range(0, n_rows, rows):
            raw, z = chunk_logits(x[c0 : c0 + rows], weight, bias, temperature, opts.softcap)
            stats.append(shard_stats(z, label_local[c0 : c0 + rows], group, w_local, smoothing, return_entropy))
            if want_pred:
                preds.append(global_argmax(raw, start, group))
        if not stats:  # no tokens: the collectives still run once on every rank
            stats.append(shard_stats(torch.empty(0, n_local, device=x.device), label_local, group))
        lse, z_label, smooth, entropy = (None if s[0] is None else torch.cat(s) for s in zip(*stats))
        loss_rows, z_rows, terms = row_terms(
            lse, z_label, smooth, y_safe, label_local, mask, w, wsum, norm, opts, n_vocab
        )
        pred = torch.where(mask, torch.cat(preds), opts.ignore_index) if want_pred else None
        outputs = reduce_outputs(
            loss_rows, z_rows if opts.return_z_loss else None, pred, y, mask, norm, opts, target.shape
        )
        ctx.save_for_backward(_input, weight, bias, label_local, w_local, *terms)
        ctx.options = group, temperature, opts.softcap, opts.reduction
        ctx.mark_non_differentiable(*(t for t in outputs[2:] if t is not None))
        entropy = None if entropy is None else entropy.view(target.shape)
        return *in_input_dtype(outputs, _input.dtype), entropy

    @staticmethod
    def backward(ctx, grad_loss, *_):
        _input, weight, bias, label_local, w_local, *terms = ctx.saved_tensors
        group, temperature, softcap, reduction = ctx.options
        g = grad_loss.float().reshape(-1) if reduction == "none" else grad_loss.float()
        terms = RowTerms(*terms).times(g)
        x = _input.reshape(-1, _input.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[8]
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=x.device) if need_b else None
        rows = split_size(x.shape[0], max(weight.shape[0], 1) * 8, CHUNK_BUDGET_BYTES)
        for c0 in range(0, x.shape[0], rows):
            part = slice(c0, c0 + rows)
            x_c = x[part]
            _, z = chunk_logits(x_c, weight, bias, temperature, softcap)
            chunk_terms = RowTerms(*(t[part] for t in terms))
            d = shard_dlogits(z, label_local[part], chunk_terms, w_local, softcap) / temperature
            if need_x:
                mm_fp32(d.to(x.dtype), weight, grad_x[part])
            if need_w:
                grad_w += d.t() @ x_c.float()
            if need_b:
                grad_b += d.sum(0)
        if need_x:
            dist.all_reduce(grad_x, group=group)
            grad_x = grad_x.to(_input.dtype).view(_input.shape)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_x, grad_w, None, None, None, None, None, None, grad_b, None, None
