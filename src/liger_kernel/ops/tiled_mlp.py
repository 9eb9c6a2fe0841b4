"""An MLP run over its tokens in shards, so that only one shard's intermediate is alive.

A gated MLP of width I holds [tokens, I] activations three times over (gate, up, their product)
for its backward: 2.8 GB per layer at 32K tokens and I = 14336 in bf16, 10x the layer's input.
Here the forward runs ``fn(mlp_module, shard)`` shard by shard without autograd, keeping only the
input; the backward recomputes each shard's forward with autograd and backpropagates it at once,
summing the parameters' gradients over the shards. Rows of an MLP are independent, so the result
is the untiled one (each shard's parameter gradients, as autograd gives them, summed in fp32 and
rounded once); the cost is one more forward.

The parameters are inputs of the autograd Function, so their gradients flow through autograd like
any other (``torch.autograd.grad`` returns them; DDP's and FSDP's accumulate-grad hooks see the
total), rather than being added into ``.grad`` behind autograd's back. Tensor hooks registered on
a parameter also fire for each shard's part inside the recompute.

For a gated MLP of plain projections (``LigerTiledGatedMLPFunction``) the recompute is only the gate
and up matmuls: the backward needs ``c = act(a) * b``, not the down projection of it, so a step
costs 22 x tokens x H x I FLOPs instead of 24 (the untiled MLP: 18). Llama-3-8B widths: 30.9 ms of
matmuls at 16K tokens on an H200 (684 TFLOP/s), against 33.8 ms through the generic recompute.
Its backward sums every gradient in fp32 and rounds it once, by blocks of the intermediate up to
about 3 I tokens (the weight gradients then need no fp32 buffers: at 16K tokens 832 MiB at its
peak, with y, against 1264 through token shards with fp32 weight-gradient sums), by token shards
beyond (the fp32 dx sum, 4 N H bytes, outgrows the three fp32 weight sums, 12 I H).

No one-pass exact backward holds much less at 64K tokens: a weight gradient's sum over the tokens
and dx's over the intermediate cannot both be single matmuls, so 3 I H or N H partial sums stay
pending, beyond bf16 precision, through the whole loop: at least 2 bytes each above the bf16
results (4 as fp32 sums here). y (the caller's), dx and the weight gradients are 1360 MiB, plus 336
pending: 1696 before any shard buffer, above Liger 0.8.5's 1616 (its shards' weight-gradient parts
summed in bf16). Two passes (weights by blocks, dx by token shards) hold less at 28 x N H I FLOPs.
"""

import math

import torch

from liger_kernel.ops.fused_linear_cross_entropy import accumulate_mm
from liger_kernel.ops.swiglu import _check_mlp_inputs, gated_backward, gated_forward
from liger_kernel.ops.utils import LigerFunction, empty_like_output


def tiled_mlp_reference(fn, mlp_module, x, compute_params=None):
    """The spec: the untiled ``fn(mlp_module, x)``."""
    return fn(mlp_module, x)


def default_num_shards(x: torch.Tensor) -> int:
    """Shards of about ``hidden_size`` tokens each (``ceil(tokens / hidden_size)``): a shard's
    intermediate is then about the size of one of the MLP's weight matrices."""
    tokens = x.numel() // max(x.shape[-1], 1)
    return max(1, -(-tokens // max(x.shape[-1], 1)))  # integer ceil: SymInt-safe under dynamic shapes


def _trainable(mlp_module, compute_params) -> tuple:
    params = mlp_module.parameters() if compute_params is None else compute_params
    return tuple(p for p in params if p.requires_grad)


class LigerTiledMLPFunction(LigerFunction):
    """``apply(fn, mlp_module, x, shards, compute_params=None) -> fn(mlp_module, x)``, computed in
    ``shards`` shards of x's rows (x [..., H]). ``compute_params``: the parameters ``fn`` uses that
    get gradients (default: those of ``mlp_module`` that require them); they are handed to autograd
    as the Function's trailing inputs."""

    @classmethod
    def apply(cls, fn, mlp_module, x, shards, compute_params=None):
        return _apply_eagerly(cls, fn, mlp_module, x, shards, _trainable(mlp_module, compute_params))

    @staticmethod
    def forward(ctx, fn, mlp_module, x, shards, compute_params=None, *params):
        if not isinstance(shards, int) or shards < 1:
            raise ValueError(f"`shards` must be a positive int, got {shards!r}.")
        rows = x.reshape(-1, x.shape[-1])
        outputs = [fn(mlp_module, shard) for shard in rows.tensor_split(shards)]
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        ctx.fn, ctx.mlp_module, ctx.shards = fn, mlp_module, shards
        ctx.save_for_backward(x, *params)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        need_x = ctx.needs_input_grad[2]
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[5:]) if need]
        rows = x.reshape(-1, x.shape[-1])
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = torch.empty_like(rows) if need_x else None
        param_grads = [None] * len(wanted)
        start = 0
        for shard, grad_shard in zip(rows.tensor_split(ctx.shards), grad_rows.tensor_split(ctx.shards)):
            with torch.enable_grad():
                shard = shard.detach().requires_grad_(need_x)
                out = ctx.fn(ctx.mlp_module, shard)
                inputs = ([shard] if need_x else []) + wanted
                grads = list(torch.autograd.grad(out, inputs, grad_shard, allow_unused=True)) if inputs else []
            if need_x:
                grad_x[start : start + shard.shape[0]] = grads.pop(0)
            for i, g in enumerate(grads):
                if g is not None:
                    param_grads[i] = _add_to_sum(param_grads[i], g)
            grads = g = out = None  # this shard's tensors dropped before the next recompute
            start += shard.shape[0]
        by_param = iter(None if g is None else g.to(p.dtype) for g, p in zip(param_grads, wanted))
        params_out = [next(by_param) if need else None for need in ctx.needs_input_grad[5:]]
        return None, None, None if grad_x is None else grad_x.view(x.shape), None, None, *params_out


def _add_to_sum(total, part):
    """``total + part`` in fp32 at least (``total`` None: the first part), in place: one rounding at
    the end, as the untiled matmul's; each later part is added as it is (upcast inside the add), no
    fp32 copy of it."""
    if total is None:
        return part.to(torch.promote_types(part.dtype, torch.float32))
    return total.add_(part)


def _fp32_matmul_sum(total, a, b):
    """``total + a @ b`` in fp32, in place (``total`` None: a new fp32 tensor): the products of a
    half-precision ``a`` and ``b`` summed in fp32 and never rounded to their dtype
    (``accumulate_mm``)."""
    first = total is None
    if first:
        total = torch.empty(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    accumulate_mm(total, a, b, first)
    return total


# The narrowest block of the intermediate: the backward's matmuls over narrower ones run below the
# H200's rate. Measured there (benchmarks/results/h200/tiled_mlp_blocks.md, fwd+bwd): Gemma-3-4B's
# widths at 4096 tokens 4.74 ms in 640-column blocks, 4.11 in 1280 (Liger 0.8.5: 4.23); Llama-3.2-1B's
# at 16384, 11.09 in 512, 9.99 in 1024. Not wider: Llama-3-8B's 16K tokens in 1200-column blocks held
# 851 MB (Liger: 848), in 1024-column ones 832 (logs/session14/e).
MIN_BLOCK_COLUMNS = 1024


def default_num_blocks(hidden_size: int, intermediate_size: int) -> int:
    """Blocks of about ``hidden_size / 4`` columns of the intermediate, and at least
    ``MIN_BLOCK_COLUMNS`` (1024 at Llama-3-8B: 14): a block's three [tokens, block] buffers are then
    about 3/4 of x's size, and its dx matmul sums over 2 x block >= H / 2 columns, so that reading
    and writing the fp32 dx sum (8 bytes an element of dx per block) takes at most a third of that
    matmul's time (326 / block at 4.2 TB/s and 684 TFLOP/s; 6% of the step, less where the
    matmul's epilogue hides it)."""
    width = max(hidden_size / 4, MIN_BLOCK_COLUMNS)
    return max(1, math.ceil(intermediate_size / width))


def _block_width(intermediate_size: int, blocks: int) -> int:
    """``ceil(I / blocks)`` rounded up to a multiple of 8 (16-byte aligned matmul operands): at most
    ``blocks`` blocks, the last one narrower where the width does not divide I."""
    return min(intermediate_size, -(-math.ceil(intermediate_size / blocks) // 8) * 8) or 1


def _backward_blocks(tokens, hidden, intermediate, shards, element_size) -> int:
    """The backward's route (``LigerTiledGatedMLPFunction``'s ``blocks``) holding fewer bytes:
    ``default_num_blocks`` blocks of the intermediate, or 0 (token shards). The block route holds
    the weight gradients in their dtype (3 I H e bytes), the fp32 dx sum (4 N H) and a block's
    buffers; the token route dx (N H e), the fp32 weight-gradient sums (12 I H) and a shard's
    buffers. In bf16 the block route holds less up to N ~ 3 I tokens, the fp32 dx sum growing
    with N where the weight sums do not: 48K tokens at Llama-3-8B widths (16K: 704 MiB against
    1136; 64K: 1760 against 1520)."""
    blocks = default_num_blocks(hidden, intermediate)
    width = _block_width(intermediate, blocks)
    shard = -(-tokens // shards)
    by_blocks = 3 * intermediate * hidden * element_size + 4 * tokens * hidden
    by_blocks += (3 * tokens + 2 * hidden) * width * element_size
    by_tokens = tokens * hidden * element_size + 12 * intermediate * hidden + 3 * shard * intermediate * element_size
    return blocks if by_blocks < by_tokens else 0


class LigerTiledGatedMLPFunction(LigerFunction):
    """``apply(x, gate_weight, up_weight, down_weight, activation, shards, blocks=None) ->
    down(act(x @ gate_weight.T) * (x @ up_weight.T))`` (``ops.swiglu.gated_mlp_reference``
    without multipliers) with the fused gated kernels, only x saved. Kernel path only: callers
    check ``use_triton``.

    The forward runs in ``shards`` shards of x's rows. The backward recomputes the gate and up
    matmuls (a, b) and its one gated-backward pass gives da, db and c (for the down weight's
    gradient), by one of two routes (``blocks``; None: the one holding fewer bytes, see
    ``_backward_blocks``), each summing every gradient in fp32 and rounding it once:

    - ``blocks`` >= 1: by blocks of the intermediate's columns, all tokens at once. Each weight
      gradient block is one matmul over all the tokens, written once in the weights' dtype (no
      fp32 weight-sized buffers); dx is summed over the blocks in fp32 (matmuls with an fp32
      output accumulating in place) in chunks of about H rows, rounded at the end one chunk at a
      time: the end holds one chunk's rounded copy more, not all of dx's.
    - ``blocks`` = 0: by the token shards, the weight gradients summed over them in fp32 buffers
      of the weights' size (matmuls with an fp32 output accumulating in place), rounded at the end
      one at a time; each shard's dx, its two products, in an fp32 shard buffer.
    """

    @staticmethod
    def forward(ctx, x, gate_weight, up_weight, down_weight, activation, shards, blocks=None):
        rows, blocks = check_tiled_gated(x, gate_weight, up_weight, down_weight, activation, shards, blocks)
        y = tiled_gated_forward(rows, gate_weight, up_weight, down_weight, activation, shards)
        ctx.save_for_backward(x, gate_weight, up_weight, down_weight)
        ctx.activation, ctx.shards, ctx.blocks = activation, shards, blocks
        return y.view(*x.shape[:-1], down_weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, *weights = ctx.saved_tensors
        rows, dy_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        settings = (ctx.activation, ctx.shards, ctx.blocks, ctx.needs_input_grad[:4])
        dx, *weight_grads = tiled_gated_backward(dy_rows, rows, *weights, *settings)
        return None if dx is None else dx.view(x.shape), *weight_grads, None, None, None


def check_tiled_gated(x, gate_weight, up_weight, down_weight, activation, shards, blocks) -> tuple:
    """``(x's rows, blocks)``, the backward's route resolved (None: ``_backward_blocks``), after
    checking every argument (errors name it)."""
    _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation)
    if up_weight is None:
        raise ValueError("`up_weight` is required: the tiled gated MLP takes separate gate and up weights.")
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"`shards` must be a positive int, got {shards!r}.")
    if blocks is not None and (not isinstance(blocks, int) or blocks < 0):
        raise ValueError(f"`blocks` must be None or an int >= 0 (0: the backward by token shards), got {blocks!r}.")
    rows = x.reshape(-1, x.shape[-1])
    if blocks is None:
        blocks = _backward_blocks(*rows.shape, gate_weight.shape[0], shards, x.element_size())
    return rows, blocks


def tiled_gated_forward(rows, gate_weight, up_weight, down_weight, activation, shards):
    """The gated MLP of x's rows [N, H] in ``shards`` shards, nothing kept: [N, H_out]."""
    y = rows.new_empty(rows.shape[0], down_weight.shape[0])
    for shard, y_shard in zip(rows.tensor_split(shards), y.tensor_split(shards)):
        c = gated_forward(shard @ gate_weight.T, shard @ up_weight.T, activation)
        torch.matmul(c, down_weight.T, out=y_shard)
    return y


def tiled_gated_backward(dy_rows, rows, gate_weight, up_weight, down_weight, activation, shards, blocks, needs):
    """``(dx rows, d_gate, d_up, d_down)``, None where ``needs`` (x, gate, up, down) says no: by
    ``blocks`` blocks of the intermediate, or (0) by the ``shards`` token shards."""
    weights = (gate_weight, up_weight, down_weight)
    if blocks:
        return _backward_by_blocks(needs, activation, blocks, rows, dy_rows, *weights)
    return _backward_by_tokens(needs, activation, shards, rows, dy_rows, *weights)


def _backward_by_tokens(needs, activation, shards, rows, dy_rows, gate_weight, up_weight, down_weight):
    need_x, need_gate, need_up, need_down = needs
    dx = empty_like_output(rows) if need_x else None
    sums = [None, None, None]  # gate, up, down
    splits = (t.tensor_split(shards) for t in (rows, dy_rows))
    dx_shards = dx.tensor_split(shards) if need_x else [None] * shards
    for shard, dy_shard, dx_shard in zip(*splits, dx_shards):
        a, b = shard @ gate_weight.T, shard @ up_weight.T
        dc = dy_shard @ down_weight
        gated_backward(dc, a, b, activation, a, b, need_down)  # da, db over a, b; c over dc
        if need_down:
            sums[2] = _fp32_matmul_sum(sums[2], dy_shard.T, dc)
        dc = None  # before dx's fp32 shard ([rows, H], under c's [rows, I] bytes when I > 2H)
        if need_x:  # both products summed in fp32, rounded once
            dx_shard.copy_(_fp32_matmul_sum(_fp32_matmul_sum(None, a, gate_weight), b, up_weight))
        if need_gate:
            sums[0] = _fp32_matmul_sum(sums[0], a.T, shard)
        if need_up:
            sums[1] = _fp32_matmul_sum(sums[1], b.T, shard)
        a = b = None  # this shard's intermediates dropped before the next one's
    for k, w in enumerate((gate_weight, up_weight, down_weight)):
        sums[k] = None if sums[k] is None else sums[k].to(w.dtype)  # one fp32 sum alive at a time
    return dx, *sums


def _backward_by_blocks(needs, activation, blocks, rows, dy_rows, gate_weight, up_weight, down_weight):
    need_x, need_gate, need_up, need_down = needs
    weights = (gate_weight, up_weight, down_weight)
    d_gate, d_up, d_down = (empty_like_output(w) if need else None for w, need in zip(weights, needs[1:]))
    chunks = default_num_shards(rows)
    dx_sums = [None] * chunks  # fp32, one per chunk of rows
    width = _block_width(gate_weight.shape[0], blocks)
    for start in range(0, gate_weight.shape[0], width):
        cols = slice(start, start + width)
        gate_up = torch.cat((gate_weight[cols], up_weight[cols]))  # [2 x block, H]
        ab = rows @ gate_up.T  # a | b
        a, b = ab.chunk(2, dim=1)
        dc = dy_rows @ down_weight[:, cols]
        gated_backward(dc, a, b, activation, a, b, need_down)  # da | db over a | b; c over dc
        if need_down:
            torch.mm(dy_rows.T, dc, out=d_down[:, cols])
        if need_gate:
            torch.mm(a.T, rows, out=d_gate[cols])
        if need_up:
            torch.mm(b.T, rows, out=d_up[cols])
        if need_x:
            dx_sums = [_fp32_matmul_sum(total, part, gate_up) for total, part in zip(dx_sums, ab.tensor_split(chunks))]
        gate_up = ab = a = b = dc = None  # this block's buffers dropped before the next one's
    dx = None
    if need_x:
        for k in range(len(dx_sums)):
            dx_sums[k] = dx_sums[k].to(rows.dtype)  # one chunk's fp32 sum freed at a time
        dx = torch.cat(dx_sums) if len(dx_sums) > 1 else dx_sums[0]
    return dx, d_gate, d_up, d_down


@torch.compiler.disable
def _apply_eagerly(cls, fn, mlp_module, x, shards, params):
    """The Function with the parameters unpacked into its trailing inputs; eager under
    ``torch.compile`` (a graph break: ``fn`` and the shard loop are not traced)."""
    return LigerFunction.apply.__func__(cls, fn, mlp_module, x, shards, None, *params)


def apply_tiled_mlp(fn, mlp_module, x, num_shards=None, compute_params=None):
    """``fn(mlp_module, x)`` in ``num_shards`` token shards (default ``default_num_shards``)."""
    shards = default_num_shards(x) if num_shards is None else num_shards
    return LigerTiledMLPFunction.apply(fn, mlp_module, x, shards, compute_params)


def apply_tiled_gated_mlp(x, gate_weight, up_weight, down_weight, activation="silu", num_shards=None, num_blocks=None):
    """The gated MLP of these weights, its forward in ``num_shards`` token shards (default
    ``default_num_shards``), its backward as ``LigerTiledGatedMLPFunction``'s ``blocks`` says."""
    from liger_kernel.ops.library import apply_of  # it imports the ops, this one's too

    shards = default_num_shards(x) if num_shards is None else num_shards
    tiled = apply_of(LigerTiledGatedMLPFunction, "tiled_gated_mlp")
    return tiled(x, gate_weight, up_weight, down_weight, activation, shards, num_blocks)
