"""Distillation from hidden states: a student head and a teacher head, without ``[tokens, vocab]`` logits.

The loss, over the ``n`` tokens whose label is not ``ignore_index``::

    loss = weight_hard_loss * sum_i CE(z_i, y_i) / n
         + weight_soft_loss * sum_i D(z_i / T, zt_i / T) / n

``z = x @ W.T + b`` (student), ``zt = xt @ Wt.T + bt`` (teacher, frozen: no gradient), ``D`` the
subclass's ``distillation_loss_fn`` (the soft loss summed over a chunk's rows, masked by the
subclass), ``T`` the temperature; the hard loss uses the unscaled student logits. ``n`` counts the
whole batch's non-ignored tokens (1 when there are none: the loss is then 0), so the result does
not depend on the chunking: TRL's ``generalized_jsd_loss`` (batchmean over non-ignored tokens) is
the JSD term. The loss comes back in fp32 (``(loss, soft_loss, hard_loss)`` with
``return_soft_hard_loss``; only ``loss`` is differentiable).

How (all gradients computed in the forward, the backward scales them by the upstream gradient):

- Tokens in blocks of ``max(chunk_size, MIN_BLOCK_TOKENS)`` (2048 by default: ``chunk_size`` is the
  peer's tokens per chunk, 1024 by default; the result does not depend on the blocks, only the
  memory and the speed do). Per block, the student logits in the input dtype, as the spec's
  ``F.linear`` (an ``lm_head``) rounds them, into the block's buffer (one matmul of M = the
  block's tokens); inside the block, sub-chunks of rows whose teacher logits (and what the row op
  allocates, ``row_arrays``) fit ``LOGITS_BUDGET_BYTES`` (192 MiB: 768 rows of bf16 logits of a
  128k vocabulary). Per sub-chunk: the teacher logits in the teacher's dtype (as the spec computes
  them, under ``no_grad``), then ``rows_loss_and_grad`` gives the summed soft and hard losses and
  writes ``d loss / d z`` (already over ``n``) over the student logits, in place.
- Per block: ``grad_x = dlogits @ W`` and ``grad_W += dlogits.T @ x`` with K = the block's tokens
  (one fp32 accumulator for the whole run: every gradient is one fp32 sum rounded once; each block
  reads and writes the 2.1 GB accumulator, so 2048-token blocks halve that traffic against 1024),
  the bias gradient as an fp32 column sum.
- ``rows_loss_and_grad`` is the seam: the base differentiates the subclass's
  ``distillation_loss_fn`` (and the cross-entropy) with torch autograd on the sub-chunk's logits
  in fp32, exact for any hook; a subclass may replace it by a row kernel (the JSD loss does:
  ``ops/jsd_distillation_rows.py``). Where the hook gives ignored tokens nothing
  (``hook_masks_ignored_rows``: the built-in losses), they are dropped before the matmuls.

Time, at N=8192, H=4096, V=128256 (bf16) on an H200: the floor is 8NHV at the measured matmul rate
(49.6 ms at 694 TFLOP/s: student logits, input and weight gradients, teacher logits). Above it:
the row kernel's three passes over both logit rows, ~8 bytes read + 2 written per logit after L2
hits (1.05e9 logits: ~11 GB, ~2.6 ms at 4.2 TB/s) and 9 exp/log per logit (~2.4 ms of the H200's
special-function units; the two overlap in part); the logits' writes by the matmuls (4 bytes per
logit, 1 ms); the accumulator's read and write per block after the first (3 x 4.2 GB, mostly
under the matmuls); the final rounding of the weight gradient (3.2 GB, 0.75 ms). Session 8's
measurement with fp32 student logits (6 bytes per logit per pass, plus 4 written by the matmul,
and matmuls of M=256 for both heads) was 65.4 ms; bf16 logits written in place cut ~8 bytes of
traffic per logit (~2 ms) and make the student's matmul one of M=2048.

Memory for a 2-byte weight [V, H]: the fp32 weight-gradient accumulator (2.1 GB at 128256 x 4096)
is held as two halves by vocabulary rows, and rounded to the weight's dtype in place in the first
half's memory (the second half's rows land in its upper part), so the rounding never needs a
third copy beside the accumulator; plus the block's logits and then gradient (2048 x V in the input
dtype, 525 MB), the sub-chunk's teacher logits (768 rows, 197 MB bf16) and the fp32 input gradient
(N x H, 134 MB at 8192 x 4096): about 2.96 GB at that shape (Liger 0.8.5: 3.06 GB in issue 12,
3.21 GB measured in session 6).

``compiled`` is accepted for compatibility and ignored: nothing here runs through torch.compile.
"""

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F

from liger_kernel.ops.cross_entropy import bad_label_message, caller_grad_mode, scale_by_upstream
from liger_kernel.ops.fused_linear_cross_entropy import flat_view, mm_fp32, split_size
from liger_kernel.ops.head_grad import WeightGradAccumulator
from liger_kernel.ops.library import apply_of
from liger_kernel.ops.utils import _apply_eagerly as apply_eagerly
from liger_kernel.ops.utils import _is_compiling as is_compiling
from liger_kernel.ops.utils import (
    check_float,
    check_same_device,
    check_same_dtype,
    fallback_backward,
    fallback_forward,
)
from liger_kernel.utils import use_triton

# Row arrays of one sub-chunk: the teacher logits plus the fp32 arrays ``rows_loss_and_grad``
# allocates (``row_arrays()``): 768 rows of bf16 teacher logits at V = 128256 for the JSD loss.
LOGITS_BUDGET_BYTES = 192 * 2**20

# Fewest tokens per block (the weight-gradient matmul's K; module docstring).
MIN_BLOCK_TOKENS = 2048

# dtype of the teacher logits; None: the teacher's input dtype, as the spec computes them.
TEACHER_LOGITS_DTYPE = None


class DistillOptions(NamedTuple):
    """What ``rows_loss_and_grad`` needs besides the logits."""

    ignore_index: int
    weight_hard_loss: float
    weight_soft_loss: float
    temperature: float
    compute_ce_loss: bool
    hook_kwargs: dict  # extra keyword arguments of ``distillation_loss_fn`` (``beta``, loss_kwargs)


def hook_kwargs(hook, beta, loss_kwargs) -> dict:
    """``loss_kwargs`` plus ``beta`` where ``hook`` takes it (the base hook's signature has no
    ``beta``, the built-in losses' do)."""
    params = inspect.signature(hook).parameters.values()
    takes_beta = any(p.name == "beta" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {**loss_kwargs, "beta": beta} if takes_beta else dict(loss_kwargs)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or float64 where it is (the losses' math dtype)."""
    return t if t.dtype == torch.float64 else t.float()


def valid_count(target, ignore_index):
    """fp32 count of non-ignored tokens, 1 when there are none (a 0 loss rather than NaN). No sync."""
    n = (target != ignore_index).sum(dtype=torch.float32)
    return torch.where(n > 0, n, 1.0)


def generic_rows_loss_and_grad(hook, student_logits, teacher_logits, target, grad_out, scale, opts: DistillOptions):
    """Summed soft and hard losses (fp32 0-dim) of student logits ``[n, V]`` (both logits handed to
    the hook in fp32), and, when ``grad_out`` ([n, V], the logits' dtype; it may be the logits
    themselves) is given, ``scale * d(w_hard * hard + w_soft * soft) / d student_logits`` written
    into it, by torch autograd through ``hook`` (exact for any hook)."""
    leaf = at_least_fp32(student_logits).detach()
    if leaf.data_ptr() == student_logits.data_ptr():
        leaf = leaf.clone()  # grad_out may be this memory
    leaf.requires_grad_(grad_out is not None)
    teacher_logits = at_least_fp32(teacher_logits)
    with torch.enable_grad():
        hard = leaf.new_zeros(())
        if opts.compute_ce_loss:
            hard = F.cross_entropy(leaf, target, ignore_index=opts.ignore_index, reduction="sum")
        soft = hook(
            leaf / opts.temperature,
            teacher_logits / opts.temperature,
            target=target,
            ignore_index=opts.ignore_index,
            **opts.hook_kwargs,
        )
        soft = torch.as_tensor(soft, dtype=torch.float32, device=leaf.device)
        if grad_out is not None:
            total = opts.weight_hard_loss * hard + opts.weight_soft_loss * soft
            (grad,) = torch.autograd.grad(total, leaf, allow_unused=True) if total.requires_grad else (None,)
            if grad is None:
                grad_out.zero_()
            else:
                grad_out.copy_(grad.mul_(scale))
    return soft.detach().float(), hard.detach().float()


class Gradients(NamedTuple):
    """What the forward keeps for the backward (None where not needed)."""

    input32: torch.Tensor  # fp32 input gradient for an upstream gradient of 1, [N, H]
    weight: torch.Tensor  # in the weight's dtype
    bias: torch.Tensor  # in the bias's dtype


def chunked_distillation(cls, tensors, chunk_size, opts: DistillOptions, needs):
    """The loop of the module docstring. ``tensors``: x [N, H], W [V, H], xt [N, Ht], Wt [V, Ht],
    y [N], b, bt (contiguous); ``needs``: input, weight, bias gradients wanted. Returns the summed
    soft and hard losses (fp32, over ``n``) and the ``Gradients``.

    When the hook gives ignored rows no loss (``hook_masks_ignored_rows``), they are dropped before
    the matmuls (one host sync): the prompt tokens of a GKD batch then cost nothing."""
    x, weight, xt, teacher_weight, y, bias, teacher_bias = tensors
    if not cls.hook_masks_ignored_rows():
        return _chunk_loop(cls, tensors, chunk_size, opts, needs)
    keep = (y != opts.ignore_index).nonzero().squeeze(1)
    if keep.numel() == y.numel():
        return _chunk_loop(cls, tensors, chunk_size, opts, needs)
    kept = (x[keep], weight, xt[keep], teacher_weight, y[keep], bias, teacher_bias)
    soft, hard, grads = _chunk_loop(cls, kept, chunk_size, opts, needs)
    if grads.input32 is not None:
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        grads = grads._replace(input32=grad_x.index_copy_(0, keep, grads.input32))
    return soft, hard, grads


def _chunk_loop(cls, tensors, chunk_size, opts: DistillOptions, needs):
    x, weight, xt, teacher_weight, y, bias, teacher_bias = tensors
    n_rows, n_vocab = x.shape[0], weight.shape[0]
    need_x, need_w, need_b = needs
    any_grad = need_x or need_w or need_b
    scale = 1.0 / valid_count(y, opts.ignore_index)
    block = max(1, min(max(chunk_size, MIN_BLOCK_TOKENS), n_rows))
    teacher_dtype = TEACHER_LOGITS_DTYPE or xt.dtype
    row_bytes = n_vocab * (teacher_dtype.itemsize + 4 * cls.row_arrays())
    rows = split_size(block, row_bytes, LOGITS_BUDGET_BYTES)
    student_buf = torch.empty(block * n_vocab, dtype=x.dtype, device=x.device)  # logits, then their gradient
    teacher_buf = torch.empty(rows * n_vocab, dtype=teacher_dtype, device=x.device)
    grad_x = torch.empty(n_rows, x.shape[1], dtype=torch.float32, device=x.device) if need_x else None
    grad_w = WeightGradAccumulator(weight) if need_w else None
    grad_b = torch.zeros(n_vocab, dtype=torch.float32, device=x.device) if need_b else None
    soft = torch.zeros((), dtype=torch.float32, device=x.device)
    hard = torch.zeros((), dtype=torch.float32, device=x.device)
    for start in range(0, n_rows, block):
        end = min(start + block, n_rows)
        logits = flat_view(student_buf, end - start, n_vocab)
        _head(x[start:end], weight, bias, logits)
        for sub in range(start, end, rows):
            sub_end = min(sub + rows, end)
            zt = flat_view(teacher_buf, sub_end - sub, n_vocab)
            _head(xt[sub:sub_end], teacher_weight, teacher_bias, zt)
            z = logits[sub - start : sub_end - start]
            chunk_soft, chunk_hard = cls.rows_loss_and_grad(z, zt, y[sub:sub_end], z if any_grad else None, scale, opts)
            soft += chunk_soft
            hard += chunk_hard
        if need_x:
            mm_fp32(logits, weight, grad_x[start:end])
        if need_w:
            grad_w.add(logits, x[start:end])
        if need_b:
            grad_b += logits.sum(0, dtype=torch.float32)
    del student_buf, teacher_buf
    grads = Gradients(
        grad_x,
        grad_w.finish() if need_w else None,
        grad_b.to(bias.dtype) if need_b else None,
    )
    return soft * scale, hard * scale, grads


def _head(x, weight, bias, out):
    """``out = x @ weight.T + bias`` in ``out``'s dtype: fp32 from the fp32 accumulator of 2-byte
    inputs, or in the inputs' dtype exactly as ``F.linear`` (the spec) rounds it."""
    if out.dtype == x.dtype and bias is not None:
        torch.addmm(bias, x, weight.t(), out=out)
        return
    mm_fp32(x, weight.t(), out)
    if bias is not None:
        out += bias


def fused_linear_distillation_reference(
    cls, student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias, opts
):
    """The spec and the fallback: ``_compute_loss`` over the whole batch as one chunk (logits in the
    inputs' dtype, as an ``lm_head`` computes them, then fp32). Returns ``(loss, soft, hard)``."""
    x = student_input.reshape(-1, student_input.shape[-1])
    xt = teacher_input.reshape(-1, teacher_input.shape[-1])
    y = target.reshape(-1)
    loss, (soft, hard) = cls._compute_loss(
        x, student_weight, xt, teacher_weight, y, student_bias, teacher_bias,
        distillation_loss_fn=cls.distillation_loss_fn, full_target=y, ignore_index=opts.ignore_index,
        weight_hard_loss=opts.weight_hard_loss, weight_soft_loss=opts.weight_soft_loss,
        compute_ce_loss=opts.compute_ce_loss, temperature=opts.temperature, **opts.hook_kwargs,
    )  # fmt: skip
    return at_least_fp32(loss), at_least_fp32(soft), at_least_fp32(hard)


def check_distillation_inputs(student_input, student_weight, teacher_input, teacher_weight, target, bias, t_bias):
    for name, t in (
        ("student_input", student_input),
        ("student_weight", student_weight),
        ("teacher_input", teacher_input),
        ("teacher_weight", teacher_weight),
    ):
        check_float(name, t)
    check_same_dtype(student_input=student_input, student_weight=student_weight, student_bias=bias)
    check_same_dtype(teacher_input=teacher_input, teacher_weight=teacher_weight, teacher_bias=t_bias)
    for name, x, w, b in (
        ("student", student_input, student_weight, bias),
        ("teacher", teacher_input, teacher_weight, t_bias),
    ):
        if w.dim() != 2 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"`{name}_weight` must be [V, H] with H = {name}_input.shape[-1] = {x.shape[-1]}; got {tuple(w.shape)}."
            )
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"`{name}_bias` must have shape ({w.shape[0]},), got {tuple(b.shape)}.")
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(
            f"`teacher_weight` has {teacher_weight.shape[0]} vocabulary rows but `student_weight` has "
            f"{student_weight.shape[0]}: the two heads must share one vocabulary."
        )
    n_rows = student_input.numel() // max(student_input.shape[-1], 1)
    n_teacher = teacher_input.numel() // max(teacher_input.shape[-1], 1)
    if n_teacher != n_rows:
        raise ValueError(
            f"`teacher_input` has {n_teacher} tokens but `student_input` has {n_rows}: pass one per token."
        )
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.numel() != n_rows:
        raise ValueError(
            f"`target` must be an integer tensor with one label per token ({n_rows}); got "
            f"{getattr(target, 'dtype', type(target).__name__)} of shape {tuple(getattr(target, 'shape', ()))}."
        )
    check_same_device(
        student_input=student_input, student_weight=student_weight, teacher_input=teacher_input,
        teacher_weight=teacher_weight, target=target, student_bias=bias, teacher_bias=t_bias,
    )  # fmt: skip


def check_labels(target, ignore_index, n_vocab):
    """Labels must be class indices or ``ignore_index`` (one host sync)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_vocab))
    if bad.any().item():
        raise ValueError(bad_label_message(n_vocab, ignore_index))


class LigerFusedLinearDistillationBase(torch.autograd.Function):
    """Base of the chunked distillation losses (module docstring). Subclasses override
    ``distillation_loss_fn`` and call ``forward`` with their class:
    ``super().forward(cls, ctx, student_input, ...)``; ``backward`` returns the gradients of the
    first 7 forward arguments (student input, student weight, teacher input, teacher weight,
    target, student bias, teacher bias), then None for the rest."""

    @classmethod
    def row_arrays(cls) -> int:
        """fp32 [rows, V] arrays that ``rows_loss_and_grad`` holds at once besides the teacher logits
        (the sub-chunk's memory budget): the fp32 student logits plus autograd's saved tensors
        through a typical hook."""
        return 11

    @classmethod
    def apply(cls, *args, **kwargs):
        if is_compiling():  # one graph break: the forward syncs and loops on the host
            return apply_eagerly(cls, *args, **kwargs)
        caller_grad_mode.enabled = torch.is_grad_enabled()  # forward runs under no_grad: remember
        return super().apply(*args, **kwargs)

    @classmethod
    def hook_masks_ignored_rows(cls) -> bool:
        """True when ``distillation_loss_fn`` gives rows at ``ignore_index`` no loss and no gradient,
        so that the forward may drop them (the built-in losses' own hooks)."""
        return False

    @staticmethod
    def check_beta(beta) -> None:
        """Raises where ``beta`` has no meaning for the subclass's loss (the built-in losses call it)."""

    @staticmethod
    def distillation_loss_fn(student_logits, teacher_logits, target=None, ignore_index=None):
        """The soft loss summed over the rows of one chunk (a 0-dim tensor): ``student_logits``,
        ``teacher_logits`` [n, V] fp32, already divided by the temperature; ``target`` [n], rows at
        ``ignore_index`` to be left out. Subclasses implement it."""
        raise NotImplementedError("subclasses of LigerFusedLinearDistillationBase implement distillation_loss_fn")

    @classmethod
    def rows_loss_and_grad(cls, student_logits, teacher_logits, target, grad_out, scale, opts: DistillOptions):
        """The seam of the module docstring: ``(soft_sum, hard_sum)`` of one sub-chunk of logits (the
        student's in the input dtype, the teacher's in its own), and ``scale * d(w_hard * hard +
        w_soft * soft) / d student_logits`` into ``grad_out`` unless it is None; ``grad_out`` is the
        student logits' own memory (written over once they are read). Here: autograd through
        ``distillation_loss_fn``."""
        return generic_rows_loss_and_grad(
            cls.distillation_loss_fn, student_logits, teacher_logits, target, grad_out, scale, opts
        )

    @staticmethod
    def chunk_forward(
        student_input_chunk,
        student_weight,
        teacher_input_chunk,
        teacher_weight,
        target_chunk,
        student_bias=None,
        teacher_bias=None,
        ignore_index=-100,
        compute_ce_loss=True,
    ):
        """Differentiable ``(student_logits, teacher_logits, hard_loss)`` of one chunk: logits in
        the inputs' dtype then fp32 (float64 stays; the teacher's under ``no_grad``), the cross-entropy summed
        over non-ignored tokens (0 unless ``compute_ce_loss``)."""
        student_logits = at_least_fp32(F.linear(student_input_chunk, student_weight, student_bias))
        with torch.no_grad():
            teacher_logits = at_least_fp32(F.linear(teacher_input_chunk, teacher_weight, teacher_bias))
        hard_loss = student_logits.new_zeros(())
        if compute_ce_loss:
            hard_loss = F.cross_entropy(student_logits, target_chunk, ignore_index=ignore_index, reduction="sum")
        return student_logits, teacher_logits, hard_loss

    @staticmethod
    def _compute_loss(
        student_input_chunk,
        student_weight,
        teacher_input_chunk,
        teacher_weight,
        target_chunk,
        student_bias=None,
        teacher_bias=None,
        distillation_loss_fn=None,
        full_target=None,
        ignore_index=-100,
        weight_hard_loss=0.5,
        weight_soft_loss=0.5,
        compute_ce_loss=True,
        temperature=1,
        **loss_kwargs,
    ):
        """One chunk's differentiable ``(loss, (soft_loss, hard_loss))``, each over the number of
        non-ignored tokens of ``full_target`` (the chunk's own target when None)."""
        student_logits, teacher_logits, hard_loss = LigerFusedLinearDistillationBase.chunk_forward(
            student_input_chunk, student_weight, teacher_input_chunk, teacher_weight, target_chunk,
            student_bias, teacher_bias, ignore_index, compute_ce_loss,
        )  # fmt: skip
        soft_loss = distillation_loss_fn(
            student_logits / temperature,
            teacher_logits / temperature,
            target=target_chunk,
            ignore_index=ignore_index,
            **loss_kwargs,
        )
        n = valid_count(target_chunk if full_target is None else full_target, ignore_index)
        soft_loss, hard_loss = soft_loss / n, hard_loss / n
        return weight_hard_loss * hard_loss + weight_soft_loss * soft_loss, (soft_loss, hard_loss)

    @staticmethod
    def forward(
        cls,
        ctx,
        student_input,
        student_weight,
        teacher_input,
        teacher_weight,
        target,
        student_bias=None,
        teacher_bias=None,
        chunk_size=1024,
        ignore_index=-100,
        weight_hard_loss=0.5,
        weight_soft_loss=0.5,
        beta=0.5,
        compute_ce_loss=True,
        temperature=1.0,
        compiled=True,
        return_soft_hard_loss=False,
        **loss_kwargs,
    ):
        """``loss`` (fp32, float64 for float64 inputs; 0-dim), or ``(loss, soft_loss, hard_loss)``
        with ``return_soft_hard_loss``. ``student_input`` [..., H], ``teacher_input`` [..., Ht] with
        as many tokens, ``target`` one label per token; ``beta`` and ``loss_kwargs`` go to ``distillation_loss_fn``."""
        check_distillation_inputs(
            student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias
        )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int (tokens per chunk); got {chunk_size!r}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
        check_labels(target, ignore_index, student_weight.shape[0])
        opts = DistillOptions(
            ignore_index, weight_hard_loss, weight_soft_loss, temperature, compute_ce_loss,
            hook_kwargs(cls.distillation_loss_fn, beta, loss_kwargs),
        )  # fmt: skip
        grad_on = caller_grad_mode.enabled
        needs = tuple(
            grad_on and t is not None and t.requires_grad for t in (student_input, student_weight, student_bias)
        )
        ctx.n_grads, ctx.return_soft_hard_loss = 7, return_soft_hard_loss
        ctx.use_chunks = use_triton(student_input) and student_input.dtype != torch.float64
        if not ctx.use_chunks:
            args = (student_input, student_weight, teacher_input, teacher_weight, target, student_bias, teacher_bias)
            if any(needs):
                outputs = fallback_forward(ctx, _reference_bound(cls, opts), *args)
            else:
                with torch.no_grad():
                    outputs = fused_linear_distillation_reference(cls, *args, opts)
            return _outputs(ctx, outputs, return_soft_hard_loss)
        ctx.input_shape, ctx.input_dtype = student_input.shape, student_input.dtype
        tensors = (
            student_input.reshape(-1, student_input.shape[-1]).contiguous(),
            student_weight.contiguous(),
            teacher_input.reshape(-1, teacher_input.shape[-1]).contiguous(),
            teacher_weight.contiguous(),
            target.reshape(-1),
            None if student_bias is None else student_bias.contiguous(),
            None if teacher_bias is None else teacher_bias.contiguous(),
        )
        with torch.no_grad():
            soft, hard, grads = chunked_distillation(cls, tensors, chunk_size, opts, needs)
        ctx.grads = grads
        loss = weight_hard_loss * hard + weight_soft_loss * soft
        return _outputs(ctx, (loss, soft, hard), return_soft_hard_loss)

    @staticmethod
    def backward(ctx, grad_output, *args):
        if not ctx.use_chunks:
            grads = fallback_backward(ctx, grad_output, *args)
            return (*grads, *[None] * (ctx.n_grads - len(grads)))
        grad_x32, grad_w, grad_b = ctx.grads
        del ctx.grads
        grad_x = None
        if grad_x32 is not None:
            grad_x = grad_x32.mul_(grad_output).to(ctx.input_dtype).view(ctx.input_shape)
        for grad in (grad_w, grad_b):
            if grad is not None:
                _scale(grad, grad_output)
        return grad_x, grad_w, None, None, None, grad_b, None


def _scale(grad, grad_output):
    """``grad *= grad_output`` in place (a kernel that skips the work when it is exactly 1)."""
    if use_triton(grad):
        scale_by_upstream(grad, grad_output.to(torch.float32), per_row=False)
    else:
        grad.mul_(grad_output)


def _reference_bound(cls, opts):
    def reference(*tensors):
        return fused_linear_distillation_reference(cls, *tensors, opts)

    return reference


def _outputs(ctx, outputs, return_soft_hard_loss):
    loss, soft, hard = outputs
    if not return_soft_hard_loss:
        return loss
    ctx.mark_non_differentiable(soft, hard)
    return loss, soft, hard


# ----------------------------------------------------------------------------- the built-in losses' shared shape


def student_teacher_forward(
    cls,
    ctx,
    student_input,
    student_weight,
    teacher_input,
    teacher_weight,
    true_labels,
    student_bias,
    teacher_bias,
    weight_hard_loss=0.5,
    weight_soft_loss=0.5,
    beta=0.5,
    ignore_index=-100,
    temperature=1.0,
    compiled=True,
    chunk_size=1024,
    return_soft_hard_loss=False,
):
    """The built-in losses' ``forward`` (a classmethod of each): ``loss`` (fp32), or ``(loss,
    soft_loss, hard_loss)`` with ``return_soft_hard_loss``; ``true_labels`` one label per token."""
    cls.check_beta(beta)
    return LigerFusedLinearDistillationBase.forward(
        cls, ctx, student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias,
        teacher_bias, chunk_size=chunk_size, ignore_index=ignore_index, weight_hard_loss=weight_hard_loss,
        weight_soft_loss=weight_soft_loss, beta=beta, temperature=temperature, compiled=compiled,
        return_soft_hard_loss=return_soft_hard_loss,
    )  # fmt: skip


def student_teacher_backward(ctx, grad_output, *args):
    """The built-in losses' ``backward``: the base's 7 gradients, None for their 8 options."""
    return (*LigerFusedLinearDistillationBase.backward(ctx, grad_output, *args), *[None] * 8)


class DistillationLossModule(torch.nn.Module):
    """The built-in losses' ``nn.Module``: the options as attributes, ``forward`` calls
    ``function.apply`` with them (under torch.compile, the twin of the custom op ``op`` where the
    subclass names one: ``ops/library_jsd.py``)."""

    function = None  # the subclass's autograd Function
    op = None  # its torch.library op, if any (a subclass that changes `function` sets it back to None)

    def __init__(
        self,
        weight_hard_loss: float = 0.5,
        weight_soft_loss: float = 0.5,
        beta: float = 0.5,
        ignore_index: int = -100,
        temperature: float = 1.0,
        compiled: bool = True,
        chunk_size: int = 1024,
        return_soft_hard_loss: bool = False,
    ):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
        self.weight_hard_loss = weight_hard_loss
        self.weight_soft_loss = weight_soft_loss
        self.ignore_index = ignore_index
        self.temperature = temperature
        self.compiled = compiled
        self.beta = beta
        self.chunk_size = chunk_size
        self.return_soft_hard_loss = return_soft_hard_loss

    def forward(
        self,
        student_input: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_input: torch.Tensor,
        teacher_weight: torch.Tensor,
        true_labels: torch.LongTensor,
        student_bias: torch.Tensor = None,
        teacher_bias: torch.Tensor = None,
    ):
        return apply_of(self.function, self.op)(
            student_input, student_weight, teacher_input, teacher_weight, true_labels, student_bias, teacher_bias,
            self.weight_hard_loss, self.weight_soft_loss, self.beta, self.ignore_index, self.temperature,
            self.compiled, self.chunk_size, self.return_soft_hard_loss,
        )  # fmt: skip
