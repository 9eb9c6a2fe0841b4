"""Per-token log-probabilities of chosen tokens from hidden states and a head, without the logits.

``logp[i] = log_softmax((x @ W.T + b) / temperature)[i, target[i]]`` (0 at ``ignore_index``),
differentiable in ``x``, ``W`` and ``b``. Every post-training loss of ``liger_kernel.chunked_loss``
(DPO, ORPO, CPO, SimPO, KTO, GRPO) is a function of these per-token values: with ``g = dL/dlogp``
its gradient with respect to the logits is ``-g / T * (onehot - softmax)`` per row, which the
exact fused-head machinery of ``ops/fused_linear_cross_entropy.py`` (imported, not copied)
produces tile by tile.

- Forward, over token chunks (``EXACT_ROWS_BUDGET_BYTES`` of fp32 logits): ``z = x_c @ W.T (+ b)``
  in fp32, times ``1 / T``; ``_row_stats_kernel`` gives each token's log-sum-exp and label logit;
  ``logp = z[y] - lse``. 2NHV flops, no ``[N, V]`` tensor.
- Backward, over vocabulary tiles (``EXACT_TILE_BUDGET_BYTES``): recompute the fp32 logits of the
  tile for all tokens, ``dlogits = coef * (softmax - onehot)`` with ``coef = -g / T``
  (``_dlogits_kernel``), then ``grad_W[tile] = dlogits.T @ x`` (one matmul over every token, its
  fp32 accumulator rounded once) and ``grad_x += dlogits @ W[tile]`` into an fp32 ``[N, H]``
  buffer rounded once at the end. 6NHV flops; 8NHV per step with the forward, extra memory the
  weight gradient + the fp32 input gradient + one fp32 tile (about 1.2 GB at N=8192, H=4096,
  V=128256 in bf16).
- ``fused_linear_logprobs_loss``: one pass for a loss whose per-token gradient is known chunk by
  chunk (a function of whole groups of rows: sequences, pairs). Per chunk it computes ``logp``,
  calls a small PyTorch function for the chunk's loss, and writes ``grad_x`` for the chunk
  (one matmul over the whole vocabulary) and ``grad_W += dlogits.T @ x_c`` into an fp32 ``[V, H]``
  accumulator (``ops/head_grad.py``, rounded in place): 6NHV in all, at the cost of that
  accumulator (2.1 GB at V=128256, H=4096). The engine of the preference and PPO/GRPO losses.
  A chunk's rows, given as several slices (DPO's chosen and rejected halves), are gathered into
  one reused ``[rows, H]`` buffer: one logits matmul and ONE accumulation into each fp32 half
  per chunk (each reads and writes its 1 GB half; at issue 12's DPO shape 8 accumulating
  matmuls instead of 16: ~14.7 GB of accumulator traffic instead of ~31.5 GB) for 16 MiB (2 x
  1024 tokens at H=4096 in bf16). H200, 2026-11-30: 57.48 ms / 2.711 GB at that shape.
- ``fused_linear_logprobs_batch_loss``: one pass for a loss of the whole batch at once (any
  coupling between rows, e.g. DPO's ``bco_pair``). The batch's logits in the input dtype are
  kept vocabulary-major (``VocabMajorLogits``): column statistics (``_column_stats_kernel``),
  the loss, dlogits in place (FLCE's ``dlogits_grid``), ``grad_x = dlogits @ W``, then ``grad_W
  = dlogits.T @ x`` written over the logits as they are consumed. 6NHV, no fp32 ``[V, H]``
  accumulator, no recomputation. Memory bound: the logits (``max(N, H) * V`` items, ``H * V`` of
  which become the weight gradient) are only kept where ``whole_batch_fits``: N <= 2H in bf16
  (N <= H in fp32), i.e. where they take no more memory than the fp32 ``[V, H]`` accumulator of
  the one-pass route; larger batches take a chunked route, so peak memory never grows with
  tokens x vocabulary. At issue 12's DPO shape (N=8192): 2.10 GB of logits + 0.13 GB fp32 input
  gradient + 0.07 GB rounded: ~2.30 GB peak extra: measured 54.99 ms / 2.303 GB on an H200
  (2026-11-30; one-pass route 57.48 ms / 2.711 GB, Liger 0.8.5 62.38 ms / 2.727 GB).

Logits: the spec's are in the input dtype (an ``lm_head``'s output), then fp32. Where nothing
recomputes them (the one-pass engine) and there is no temperature, the kernels compute exactly
those (``ONE_PASS_LOGITS_IN_INPUT_DTYPE``: half the memory and traffic of fp32 ones), and a frozen
reference head beside it the same (``frozen_head_logprobs``, or ``batch_frozen_logprobs`` beside
the whole-batch route: the same matmul calls); elsewhere fp32 logits (the
backward's tiles must match the forward's statistics). Softmax in fp32 everywhere;
the dlogits enter the gradient matmuls in the input dtype, rounded to nearest (as the fused
cross-entropy does).
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from liger_kernel.ops.cross_entropy import (
    CEOptions,
    RemembersGradMode,
    caller_grad_mode,
    finish_logsumexp,
    online_logsumexp_step,
    raise_if_bad_labels,
)
from liger_kernel.ops.fused_linear_cross_entropy import (
    EXACT_ROWS_BUDGET_BYTES,
    EXACT_TILE_BUDGET_BYTES,
    RowTerms,
    _row_stats_kernel,
    accumulate_mm,
    dlogits_grid,
    dlogits_in_place,
    flat_view,
    mm_fp32,
    plain_on,
    split_size,
)
from liger_kernel.ops.head_grad import WeightGradAccumulator
from liger_kernel.ops.utils import cdiv, check_float, check_same_device, check_same_dtype, next_power_of_2
from liger_kernel.utils import use_triton

# The one-pass engine's logits in the input dtype (the spec's, ``fused_linear_logprobs_reference``:
# an lm_head's output) rather than fp32, when there is no temperature: half the buffer (one DPO pair
# of 2 x 1024 tokens at V=128256 in bf16: 501 MiB) and half the traffic of the row passes over it;
# a frozen reference head beside it uses the same dtype (``frozen_head_logprobs``). Read at call time.
ONE_PASS_LOGITS_IN_INPUT_DTYPE = True

# dlogits_in_place reads only ``label_smoothing`` (0: no smoothing term) and ``softcap`` (None).
_PLAIN = CEOptions()


def fused_linear_logprobs_reference(x, weight, target, bias=None, temperature=1.0, ignore_index=-100):
    """The spec and the CPU fallback: logits in the input dtype (as an ``lm_head`` computes them),
    log-softmax in fp32, the target's entry per row, 0 at ignored rows; fp32 ``[N]``."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    logits = torch.nn.functional.linear(x, weight, bias).to(compute) / temperature
    mask = target != ignore_index
    safe = torch.where(mask, target, 0)
    logp = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def check_logprobs_inputs(x, weight, target, bias, temperature):
    check_float("input", x)
    check_float("weight", weight)
    check_same_dtype(input=x, weight=weight, bias=bias)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            "`input` must be [N, H] and `weight` [V, H] with the same H; "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}."
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"`bias` must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.shape != (x.shape[0],):
        raise ValueError(f"`target` must be an integer tensor of shape ({x.shape[0]},), one label per input row.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    check_same_device(input=x, weight=weight, bias=bias, target=target)


class HeadInputs(NamedTuple):
    """A head call's inputs as the kernels take them: ``x``, ``weight``, ``bias`` detached and
    contiguous; ``mask`` (non-ignored rows), ``y_safe`` (labels safe to read, 0 elsewhere),
    ``label`` (-1 at ignored rows: the dlogits kernel's convention), ``bad`` (the out-of-range
    flag) and ``ignore_index`` (for the message)."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    mask: torch.Tensor
    y_safe: torch.Tensor
    label: torch.Tensor
    bad: torch.Tensor
    ignore_index: int

    def raise_if_bad_labels(self):
        raise_if_bad_labels(self.bad, self.weight.shape[0], self.ignore_index)


def head_inputs(x, weight, target, bias, temperature, ignore_index, empty_on_reference=False):
    """The inputs checked (errors naming the public arguments), then None where the reference
    computes instead (``use_triton`` off, float64, or no rows when ``empty_on_reference``), else
    ``HeadInputs``."""
    check_logprobs_inputs(x, weight, target, bias, temperature)
    if not use_triton(x) or x.dtype == torch.float64 or (empty_on_reference and x.shape[0] == 0):
        return None
    n_vocab = weight.shape[0]
    mask = target != ignore_index
    in_range = (target >= 0) & (target < n_vocab)
    return HeadInputs(
        x.detach().contiguous(),
        weight.detach().contiguous(),
        None if bias is None else bias.detach().contiguous(),
        mask,
        torch.where(mask & in_range, target, 0),
        torch.where(mask, target, -1),
        (mask & ~in_range).any(),
        ignore_index,
    )


def reciprocal_parts(temperature) -> tuple[float, float]:
    """``1 / temperature`` as two fp32 values ``hi + lo``. ``fma(z, hi, z * lo)`` is ``z / T``
    correctly rounded but for rare ties; ``z * fp32(1 / T)`` is off by one relative error (4.8e-8 at T = 0.9) in
    every logit, which biases every log-prob the same way (by 4.8e-8 (z_y - E[z]), ~5e-7): a
    sequence sum adds it up (at 512 tokens VESPO's weight and loss were off by 1.4e-4 relative,
    5.5x the fp32 bound; unbiased they are within it)."""
    hi = torch.tensor(1.0 / temperature, dtype=torch.float32).item()
    return hi, 1.0 / temperature - hi


@triton.jit
def divide(z, inv_hi, inv_lo):
    """``z / T`` from ``reciprocal_parts(T)`` (fp32), rounded once (an fma); infinite ``z`` as
    ``z * inv_hi`` (the correction term would make ``inf - inf``)."""
    return tl.fma(z, inv_hi, tl.where(tl.abs(z) < float("inf"), z * inv_lo, 0.0))


@triton.jit
def _divide_kernel(z_ptr, n, inv_hi, inv_lo, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(z_ptr + offs, divide(tl.load(z_ptr + offs, mask=mask), inv_hi, inv_lo), mask=mask)


def _logits(x_rows, weight_rows, bias_rows, temperature, out):
    """``(x_rows @ weight_rows.T + bias_rows) / T`` into ``out`` (fp32, or the input dtype as
    ``F.linear`` computes it: the bias added before the one rounding)."""
    if bias_rows is not None and out.dtype == x_rows.dtype != torch.float32:
        torch.addmm(bias_rows, x_rows, weight_rows.t(), out=out)
    else:
        mm_fp32(x_rows, weight_rows.t(), out)
        if bias_rows is not None:
            out += bias_rows
    return divide_in_place(out, temperature)


def divide_in_place(z, temperature):
    """``z /= temperature`` for a contiguous fp32 ``z``, unbiased (``reciprocal_parts``)."""
    if temperature != 1.0 and z.numel():
        block = 4096
        _divide_kernel[(triton.cdiv(z.numel(), block),)](z, z.numel(), *reciprocal_parts(temperature), BLOCK=block)
    return z


def _row_stats(z, y_safe, lse, z_label):
    n_rows, n_vocab = z.shape
    _row_stats_kernel[(n_rows,)](
        z, z.stride(0), y_safe, lse, lse, z_label, lse, n_vocab, 1.0,
        HAS_WEIGHT=False, SMOOTHING=False, SOFTCAP=False, BLOCK=min(4096, next_power_of_2(n_vocab)), num_warps=8,
    )  # fmt: skip


def logprobs_forward(head: HeadInputs, temperature, budget=None, dtype=torch.float32):
    """``(logp, lse)`` over token chunks of logits in ``dtype``. Raises on labels out of range
    (one sync)."""
    x, weight, bias = head.x, head.weight, head.bias
    n_rows = x.shape[0]
    n_vocab = weight.shape[0]
    lse = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    z_label = torch.empty_like(lse)
    if n_rows:
        rows = split_size(n_rows, n_vocab * dtype.itemsize, budget or EXACT_ROWS_BUDGET_BYTES)
        buf = torch.empty(rows * n_vocab, dtype=dtype, device=x.device)
        for start in range(0, n_rows, rows):
            end = min(start + rows, n_rows)
            z = _logits(x[start:end], weight, bias, temperature, flat_view(buf, end - start, n_vocab))
            _row_stats(z, head.y_safe[start:end], lse[start:end], z_label[start:end])
    head.raise_if_bad_labels()
    return torch.where(head.mask, z_label - lse, 0.0), lse


def logprobs_backward(x, weight, bias, lse, label, grad_logp, temperature, needs, budget=None):
    """Gradients ``(grad_x, grad_W, grad_b)`` for ``grad_logp`` [N] (fp32) over vocabulary tiles;
    ``needs`` says which to compute. Each is one fp32 accumulator rounded once."""
    need_x, need_w, need_b = needs
    n_rows, hidden = x.shape
    n_vocab = weight.shape[0]
    coef = torch.where(label >= 0, grad_logp * (-1.0 / temperature), 0.0)
    terms = RowTerms(lse, label, coef, coef, coef)
    new = torch.empty if n_rows else torch.zeros  # every entry is written once, unless there are no rows
    grad_x = new(n_rows, hidden, dtype=torch.float32, device=x.device) if need_x else None
    grad_w = new(weight.shape, dtype=weight.dtype, device=x.device) if need_w else None
    grad_b = new(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    if n_rows:
        cols = split_size(n_vocab, n_rows * 4, budget or EXACT_TILE_BUDGET_BYTES)
        buf = torch.empty(n_rows * cols, dtype=torch.float32, device=x.device)
        for start in range(0, n_vocab, cols):
            end = min(start + cols, n_vocab)
            tile = slice(start, end)
            z = _logits(
                x,
                weight[tile],
                None if bias is None else bias[tile],
                temperature,
                flat_view(buf, n_rows, end - start),
            )
            g = dlogits_in_place(z, x.dtype, start, terms, None, _PLAIN)
            if need_w:
                torch.mm(g.t(), x, out=grad_w[tile])
            if need_x:
                accumulate_mm(grad_x, g, weight[tile], first=start == 0)
            if need_b:
                torch.sum(g, 0, dtype=torch.float32, out=grad_b[tile])
    return (
        None if grad_x is None else grad_x.to(x.dtype),
        grad_w,
        None if grad_b is None else grad_b.to(bias.dtype),
    )


class LigerFusedLinearLogprobsFunction(RemembersGradMode):
    """``fused_linear_logprobs`` as an autograd Function (module docstring: 2NHV forward, 6NHV
    backward): differentiable in ``x``, ``weight``, ``bias``; ``head`` their ``head_inputs``."""

    @staticmethod
    def forward(ctx, x, weight, bias, head, temperature):
        logp, lse = logprobs_forward(head, temperature)
        ctx.needs = tuple(caller_grad_mode.enabled and ctx.needs_input_grad[i] for i in (0, 1, 2))
        ctx.temperature = temperature
        if any(ctx.needs):
            ctx.save_for_backward(head.x, head.weight, head.bias, lse, head.label)
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        x, weight, bias, lse, label = ctx.saved_tensors
        grads = logprobs_backward(x, weight, bias, lse, label, grad_logp.float(), ctx.temperature, ctx.needs)
        grad_x, grad_w, grad_b = grads
        return grad_x, grad_w, grad_b, None, None


def frozen_head_logprobs(x, weight, target, bias=None, temperature=1.0, ignore_index=-100, logits_dtype=None):
    """``fused_linear_logprobs`` of a frozen head (no gradient, no autograd) from logits in
    ``logits_dtype`` (None: fp32). Pass the trained head's logits dtype (``one_pass_logits_dtype``
    on the one-pass route), so that identical heads give identical log-probs: a DPO reference
    equal to the policy gives margins of exactly 0, as in the spec."""
    head = head_inputs(x, weight, target, bias, temperature, ignore_index)
    if head is None:
        with torch.no_grad():
            return fused_linear_logprobs_reference(x, weight, target, bias, temperature, ignore_index)
    dtype = torch.float32 if logits_dtype is None or temperature != 1.0 else logits_dtype
    return logprobs_forward(head, temperature, dtype=dtype)[0]


def fused_linear_logprobs(x, weight, target, bias=None, temperature=1.0, ignore_index=-100):
    """``x`` [N, H], ``weight`` [V, H], ``target`` [N] int, ``bias`` [V] or None -> fp32 [N]."""
    head = head_inputs(x, weight, target, bias, temperature, ignore_index)
    if head is None:
        return fused_linear_logprobs_reference(x, weight, target, bias, temperature, ignore_index)
    return LigerFusedLinearLogprobsFunction.apply(x, weight, bias, head, temperature)


def logits_dtype(x, temperature):
    """The input dtype without a temperature (exactly the spec's logits, as an ``lm_head``
    computes them), else fp32 (the spec divides fp32 logits by the temperature)."""
    return x.dtype if temperature == 1.0 else torch.float32


def one_pass_logits_dtype(x, temperature):
    """The dtype of ``fused_linear_logprobs_loss``'s chunk logits (``ONE_PASS_LOGITS_IN_INPUT_DTYPE``)."""
    return logits_dtype(x, temperature) if ONE_PASS_LOGITS_IN_INPUT_DTYPE else torch.float32


def one_pass_row_bytes(x, weight, temperature):
    """Bytes of one row of chunk logits (callers size their chunks with it)."""
    return weight.shape[0] * one_pass_logits_dtype(x, temperature).itemsize


def _rows(chunk, device):
    """A chunk's rows as one index (a slice or a 1-D tensor) and as contiguous slices (None for a
    tensor). ``chunk``: a slice, a list of slices, or a 1-D index tensor."""
    if isinstance(chunk, slice):
        return chunk, [chunk]
    if isinstance(chunk, (list, tuple)):
        if len(chunk) == 1:
            return chunk[0], list(chunk)
        return torch.cat([torch.arange(s.start, s.stop, device=device) for s in chunk]), list(chunk)
    return chunk, None


def _gathered(x, rows, segments, buf):
    """A chunk's input rows as one contiguous ``[n, H]`` matrix: a view of ``x`` for one segment,
    else copied into the front of ``buf`` (allocated once for the largest chunk)."""
    if segments is not None and len(segments) == 1:
        return x[segments[0]]
    out = buf[: _count(segments or rows)]
    if segments is None:
        return torch.index_select(x, 0, rows, out=out)
    for start, seg in zip(_starts(segments), segments):
        out[start : start + seg.stop - seg.start].copy_(x[seg])
    return out


def _starts(segments):
    """Where each segment's rows begin in the chunk."""
    starts, start = [], 0
    for seg in segments:
        starts.append(start)
        start += seg.stop - seg.start
    return starts


def _count(chunk):
    if isinstance(chunk, (list, tuple)):
        return sum(s.stop - s.start for s in chunk)
    return chunk.stop - chunk.start if isinstance(chunk, slice) else len(chunk)


def fused_linear_logprobs_loss(
    x, weight, target, bias, chunks, loss_fn, temperature=1.0, ignore_index=-100, needs=(True, True, True)
):
    """One pass for a loss that is a sum of per-chunk terms: ``loss = sum_k loss_fn(k, logp_k)``,
    ``logp_k`` the fp32 log-probs of the rows ``chunks[k]`` (a slice, a list of slices: no copy of
    the input gradient's rows, or a 1-D index tensor; chunks
    should be whole groups that the loss couples, and cover each row at most once). ``loss_fn``
    is plain PyTorch, differentiated with autograd. No autograd across the call: returns ``(loss,
    logp, grad_x, grad_W, grad_b)`` (``logp`` [N] detached, 0 at rows outside every chunk;
    gradients for an upstream gradient of 1, None where ``needs`` says so, or without a bias).
    On the kernels: 6NHV flops, one chunk of logits (``one_pass_logits_dtype``) and the fp32
    ``[V, H]`` weight-gradient accumulator (``WeightGradAccumulator``, rounded in place);
    elsewhere the reference and autograd."""
    head = head_inputs(x, weight, target, bias, temperature, ignore_index)
    if head is None:
        return _loss_reference(x, weight, target, bias, chunks, loss_fn, temperature, ignore_index, needs)
    x, weight, bias, mask, y_safe, label = head[:6]
    need_x, need_w, need_b = needs
    need_b = need_b and bias is not None
    n_rows = x.shape[0]
    n_vocab = weight.shape[0]
    logp_all = torch.zeros(n_rows, dtype=torch.float32, device=x.device)
    grad_x = torch.zeros_like(x) if need_x else None
    grad_w = WeightGradAccumulator(weight) if need_w else None
    grad_b32 = torch.zeros(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    largest = max((_count(c) for c in chunks), default=0)
    buf = torch.empty(largest * n_vocab, dtype=one_pass_logits_dtype(x, temperature), device=x.device)
    # A chunk's input rows gathered once into one reused buffer (16 MiB for a DPO pair of 2 x 1024
    # tokens at H=4096 in bf16): one logits matmul and ONE accumulation into each fp32 half of the
    # weight gradient per chunk, instead of one per segment (each reads and writes the 1 GB half).
    parts = [_rows(chunk, x.device) for chunk in chunks]
    gathered = any(segments is None or len(segments) > 1 for _, segments in parts)
    x_buf = torch.empty(largest, x.shape[1], dtype=x.dtype, device=x.device) if gathered else None
    for k, (chunk, (rows, segments)) in enumerate(zip(chunks, parts)):
        n = _count(chunk)
        if n == 0:
            continue
        z = flat_view(buf, n, n_vocab)
        x_rows = _gathered(x, rows, segments, x_buf)
        _logits(x_rows, weight, bias, temperature, z)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        z_label = torch.empty_like(lse)
        _row_stats(z, y_safe[rows], lse, z_label)
        logp = torch.where(mask[rows], z_label - lse, 0.0)
        part, terms = _loss_and_terms(functools.partial(loss_fn, k), logp, lse, label[rows], temperature)
        loss += part
        logp_all[rows] = logp
        g = dlogits_in_place(z, x.dtype, 0, terms, None, _PLAIN)
        if need_w:
            grad_w.add(g, x_rows)
        if need_x and segments is not None:  # written in place, segment by segment
            for start, seg in zip(_starts(segments), segments):
                torch.mm(g[start : start + seg.stop - seg.start], weight, out=grad_x[seg])
        elif need_x:  # the gathered rows are no longer needed: their buffer takes the product
            grad_x.index_copy_(0, rows, torch.mm(g, weight, out=x_rows))
        if need_b:
            grad_b32 += g.sum(0, dtype=torch.float32)
    buf = z = g = x_rows = x_buf = None  # the chunk's logits are freed before the weight gradient is rounded
    head.raise_if_bad_labels()
    grad_w = None if grad_w is None else grad_w.finish()
    grad_b = None if grad_b32 is None else grad_b32.to(bias.dtype)
    return loss, logp_all, grad_x, grad_w, grad_b


def whole_batch_fits(x, weight, temperature=1.0) -> bool:
    """Whether ``fused_linear_logprobs_batch_loss`` applies: logits in the input dtype (no
    temperature, ``ONE_PASS_LOGITS_IN_INPUT_DTYPE``) and the batch's ``[N, V]`` of them no larger
    than the one-pass route's fp32 ``[V, H]`` weight-gradient accumulator (N <= 2H in bf16)."""
    n_rows, hidden = x.shape
    return one_pass_logits_dtype(x, temperature) == x.dtype and n_rows * x.element_size() <= 4 * hidden


@triton.jit
def _column_stats_kernel(
    z_ptr,  # [V_piece, N] logits, vocabulary-major (unit token stride)
    stride_z,
    y_ptr,  # [N] labels, in range (0 at ignored tokens)
    lse_ptr,  # [splits, N] fp32 out: each split's log-sum-exp
    z_label_ptr,  # [N] fp32 out: the label's logit (written by the split that holds it)
    n_tok,
    n_voc,
    col0,  # the piece's first vocabulary row
    voc_per_split,
    BLOCK_TOK: tl.constexpr,
    BLOCK_VOC: tl.constexpr,
):
    """``_row_stats_kernel``'s log-sum-exp and label logit over vocabulary-major logits: one program
    per block of tokens and range of vocabulary rows (its partial log-sum-exp, merged by the
    caller), loads along the tokens."""
    tok = tl.program_id(0) * BLOCK_TOK + tl.arange(0, BLOCK_TOK)
    tok_mask = tok < n_tok
    split = tl.program_id(1)
    first = split * voc_per_split
    last = tl.minimum(first + voc_per_split, n_voc)
    m = tl.full([BLOCK_VOC, BLOCK_TOK], -1e30, tl.float32)
    d = tl.zeros([BLOCK_VOC, BLOCK_TOK], tl.float32)
    for start in range(first, last, BLOCK_VOC):
        voc = start + tl.arange(0, BLOCK_VOC)
        mask = (voc < last)[:, None] & tok_mask[None, :]
        z = tl.load(z_ptr + voc.to(tl.int64)[:, None] * stride_z + tok[None, :], mask=mask, other=float("-inf"))
        m, d = online_logsumexp_step(z.to(tl.float32), m, d)
    tl.store(lse_ptr + split * n_tok + tok, finish_logsumexp(m, d), mask=tok_mask)
    y = tl.load(y_ptr + tok, mask=tok_mask, other=0) - col0
    hit = tok_mask & (y >= first) & (y < last)
    z_y = tl.load(z_ptr + y.to(tl.int64) * stride_z + tok, mask=hit, other=0.0)
    tl.store(z_label_ptr + tok, z_y.to(tl.float32), mask=hit)


# Vocabulary rows of one program of ``_column_stats_kernel`` (at V=128256, N=8192: 16 ranges a piece,
# 1024 programs of 128 tokens).
STATS_ROWS_PER_PROGRAM = 4096
# The weight-gradient matmuls whose output would overwrite logits not yet read go through a
# temporary of this size (the first 4096 vocabulary rows at H=4096 in bf16), copied in after.
WEIGHT_GRAD_STAGE_BYTES = 32 * 2**20


class VocabMajorLogits:
    """The batch's logits ``[V, N]`` (vocabulary-major) in the input dtype, laid out so that the
    weight gradient ``[V, H]`` can be written over them as they are consumed: ``head`` holds
    exactly ``V * H`` items (it becomes the gradient) and the first vocabulary rows, at
    ``offset``; for N > H the rows that do not fit are in ``tail``. Rows are ``ld`` items apart
    (N rounded up to a multiple of 8: 16-byte aligned for the matmuls). ``pieces``: ``(first
    row, end row, [rows, N] view)``. A frozen reference head uses the same calls, so that an
    identical head gives identical logits."""

    def __init__(self, x, weight, bias):
        n_rows, hidden = x.shape
        n_vocab = weight.shape[0]
        self.shape = (n_vocab, hidden)
        self.ld = ld = cdiv(max(n_rows, 1), 8) * 8
        self.head = torch.empty(n_vocab * hidden, dtype=x.dtype, device=x.device)
        in_head = min(n_vocab, n_vocab * hidden // ld)
        self.offset = max(0, n_vocab * (hidden - ld))  # N <= H: all rows in the head, at its end
        head_rows = self.head[self.offset : self.offset + in_head * ld].view(in_head, ld)
        self.pieces = [(0, in_head, head_rows[:, :n_rows])]
        self.tail = None
        if in_head < n_vocab:
            self.tail = torch.empty((n_vocab - in_head) * ld, dtype=x.dtype, device=x.device)
            self.pieces.append((in_head, n_vocab, self.tail.view(n_vocab - in_head, ld)[:, :n_rows]))
        for first, end, z in self.pieces:
            if bias is None:
                torch.mm(weight[first:end], x.t(), out=z)
            else:  # added before the one rounding, as F.linear does
                torch.addmm(bias[first:end, None], weight[first:end], x.t(), out=z)

    def stats(self, y_safe):
        """``(lse, label logit)`` per token, fp32."""
        n_rows = y_safe.shape[0]
        splits = [cdiv(end - first, STATS_ROWS_PER_PROGRAM) for first, end, _ in self.pieces]
        partial = torch.empty(sum(splits), n_rows, dtype=torch.float32, device=y_safe.device)
        z_label = torch.empty(n_rows, dtype=torch.float32, device=y_safe.device)
        row = 0
        for (first, end, z), count in zip(self.pieces, splits):
            block_tok = 128  # x 32 vocabulary rows: 8 KiB of bf16 logits a step
            _column_stats_kernel[(cdiv(n_rows, block_tok), count)](
                z, z.stride(0), y_safe, partial[row:], z_label, n_rows, end - first, first, STATS_ROWS_PER_PROGRAM,
                BLOCK_TOK=block_tok, BLOCK_VOC=32, num_warps=8,
            )  # fmt: skip
            row += count
        return torch.logsumexp(partial, 0), z_label

    def to_dlogits(self, terms: RowTerms):
        """The logits replaced by the loss's dlogits (in place, same dtype)."""
        for first, _, z in self.pieces:
            dlogits_grid(z.t(), z.t(), first, terms, None, _PLAIN)

    def bias_grad(self):
        return torch.cat([torch.sum(z, 1, dtype=torch.float32) for _, _, z in self.pieces])

    def input_grad(self, weight):
        """``dlogits @ W``: one matmul per piece, accumulated in fp32 when there are two."""
        if len(self.pieces) == 1:
            return torch.mm(self.pieces[0][2].t(), weight)
        n_rows = self.pieces[0][2].shape[1]
        grad = torch.empty(n_rows, weight.shape[1], dtype=torch.float32, device=weight.device)
        for first, end, z in self.pieces:
            accumulate_mm(grad, z.t(), weight[first:end], first == 0)
        return grad.to(weight.dtype)

    def weight_grad(self, x):
        """``dlogits.T @ x`` written over the head as its rows are consumed (each output row only
        onto logits already read: directly where they were read by earlier matmuls, else through
        a ``WEIGHT_GRAD_STAGE_BYTES`` temporary), then the tail's rows; consumes the logits."""
        n_vocab, hidden = self.shape
        out = self.head.view(n_vocab, hidden)
        _, in_head, z = self.pieces[0]
        stage = max(1, WEIGHT_GRAD_STAGE_BYTES // (hidden * x.element_size()))
        start = 0
        while start < in_head:
            free_end = min(in_head, (self.offset + start * self.ld) // hidden)  # out[:free_end] lies on read rows
            if free_end - start >= min(stage, in_head - start):
                end = free_end
                torch.mm(z[start:end], x, out=out[start:end])
            else:
                end = min(start + stage, in_head)
                out[start:end].copy_(torch.mm(z[start:end], x))
            start = end
        if self.tail is not None:
            torch.mm(self.pieces[1][2], x, out=out[in_head:])
        self.pieces, self.tail = [], None
        return plain_on(self.head, out.dtype, (n_vocab, hidden))  # autograd may keep it as .grad


def fused_linear_logprobs_batch_loss(x, weight, target, bias, loss_fn, ignore_index=-100, needs=(True, True, True)):
    """``fused_linear_logprobs_loss`` for a loss of the whole batch at once (``loss = loss_fn(logp)``,
    ``logp`` [N] fp32: any coupling between rows, e.g. DPO's ``bco_pair``, whose shift is the
    batch's mean reward), no temperature. The batch's logits in the input dtype are computed once
    and kept, vocabulary-major (``VocabMajorLogits``): per-token statistics, the loss and its
    per-token gradient, the dlogits over the logits, then ``grad_x`` (one matmul a piece) and
    ``grad_W`` written over them. 6NHV flops with no fp32 ``[V, H]`` accumulator and no
    recomputation; peak extra memory ``max(N, H) * V`` items (``H * V`` of them become the weight
    gradient) + the input gradient (fp32 while two pieces add up): 2.23 GB at N=8192, H=4096,
    V=128256 in bf16. Callers use it only where ``whole_batch_fits`` (N <= 2H in bf16): the
    logits then take no more memory than the one-pass route's fp32 ``[V, H]`` accumulator; above
    it a chunked route runs, so peak memory never grows with tokens x vocabulary.
    Returns ``(loss, logp, grad_x, grad_W, grad_b)`` as ``fused_linear_logprobs_loss``."""
    head = head_inputs(x, weight, target, bias, 1.0, ignore_index, empty_on_reference=True)
    if head is None:
        whole = [slice(0, x.shape[0])]
        return _loss_reference(x, weight, target, bias, whole, lambda _, lp: loss_fn(lp), 1.0, ignore_index, needs)
    need_x, need_w, need_b = needs
    x, weight, bias = head.x, head.weight, head.bias
    logits, lse, logp = _batch_logprobs(head)
    loss, terms = _loss_and_terms(loss_fn, logp, lse, head.label, 1.0)
    loss = loss.to(torch.float32)  # as the chunk loop's sum
    logits.to_dlogits(terms)
    grad_b = logits.bias_grad().to(bias.dtype) if need_b and bias is not None else None
    grad_x = logits.input_grad(weight) if need_x else None
    grad_w = logits.weight_grad(x) if need_w else None
    head.raise_if_bad_labels()  # last: its sync leaves the GPU nothing to wait for
    return loss, logp, grad_x, grad_w, grad_b


def batch_frozen_logprobs(x, weight, target, bias=None, ignore_index=-100):
    """``frozen_head_logprobs`` through ``VocabMajorLogits``: what
    ``fused_linear_logprobs_batch_loss`` computes for a trained head of the same values."""
    head = head_inputs(x, weight, target, bias, 1.0, ignore_index, empty_on_reference=True)
    if head is None:
        with torch.no_grad():
            return fused_linear_logprobs_reference(x, weight, target, bias, 1.0, ignore_index)
    logp = _batch_logprobs(head)[2]
    head.raise_if_bad_labels()
    return logp


def _batch_logprobs(head: HeadInputs):
    """``(VocabMajorLogits, lse, logp)`` of the batch."""
    logits = VocabMajorLogits(head.x, head.weight, head.bias)
    lse, z_label = logits.stats(head.y_safe)
    return logits, lse, torch.where(head.mask, z_label - lse, 0.0)


def _loss_and_terms(loss_fn, logp, lse, label, temperature):
    """``(loss, RowTerms)``: ``loss_fn(logp)`` (detached) and the dlogits terms of its gradient,
    ``coef = -dloss/dlogp / T`` (0 at ignored rows, and for a loss that ignores its log-probs)."""
    logp = logp.detach().requires_grad_()
    with torch.enable_grad():
        loss = loss_fn(logp)
    if loss.requires_grad:
        (grad_logp,) = torch.autograd.grad(loss, logp, allow_unused=True, materialize_grads=True)
    else:
        grad_logp = torch.zeros_like(logp)
    coef = torch.where(label >= 0, grad_logp * (-1.0 / temperature), 0.0)
    return loss.detach(), RowTerms(lse, label, coef, coef, coef)


def _loss_reference(x, weight, target, bias, chunks, loss_fn, temperature, ignore_index, needs):
    """``fused_linear_logprobs_loss`` through the reference and autograd."""
    leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip((x, weight, bias), needs)]
    with torch.enable_grad():
        logp = fused_linear_logprobs_reference(leaves[0], leaves[1], target, leaves[2], temperature, ignore_index)
        rows = [_rows(chunk, x.device)[0] for chunk in chunks]
        loss = sum((loss_fn(k, logp[r]) for k, r in enumerate(rows)), torch.zeros((), device=x.device))
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    if wanted and loss.requires_grad:
        found = iter(torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True))
    else:
        found = iter([torch.zeros_like(t) for t in wanted])
    grads = [next(found) if t is not None and t.requires_grad else None for t in leaves]
    covered = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for r in rows:
        covered[r] = True
    logp = torch.where(covered, logp.detach(), 0.0)
    return loss.detach(), logp, *grads
