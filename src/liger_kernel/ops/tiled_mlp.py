"""An MLP run over its tokens in shards, so that only one shard's intermediate is alive.

A gated MLP of width I holds [tokens, I] activations three times over (gate, up, their product)
for its backward: 2.8 GB per layer at 32K tokens and I = 14336 in bf16, 10x the layer's input.
Here the forward runs ``fn(mlp_module, shard)`` shard by shard without autograd, keeping only the
input; the backward recomputes each shard's forward with autograd and backpropagates it at once,
summing the parameters' gradients over the shards. Rows of an MLP are independent, so the result
is the untiled one (the weight gradients summed over the shards in fp32 and rounded once, as one
matmul's would be); the cost is one more forward.

The parameters are inputs of the autograd Function, so their gradients flow through autograd like
any other (``torch.autograd.grad`` returns them; DDP's and FSDP's accumulate-grad hooks see the
total), rather than being added into ``.grad`` behind autograd's back. Tensor hooks registered on
a parameter also fire for each shard's part inside the recompute.

For a gated MLP of plain projections (``LigerTiledGatedMLPFunction``) the recompute is only the gate
and up matmuls: the backward needs ``c = act(a) * b``, not the down projection of it, so a step
costs 22 x tokens x H x I FLOPs instead of 24 (the untiled MLP: 18). Llama-3-8B widths: 30.9 ms of
matmuls at 16K tokens on an H200 (684 TFLOP/s), against 33.8 ms through the generic recompute.
"""

import math

import torch

from liger_kernel.ops.swiglu import _check_mlp_inputs, gated_backward, gated_forward
from liger_kernel.ops.utils import LigerFunction, empty_like_output


def tiled_mlp_reference(fn, mlp_module, x, compute_params=None):
    """The spec: the untiled ``fn(mlp_module, x)``."""
    return fn(mlp_module, x)


def default_num_shards(x: torch.Tensor) -> int:
    """Shards of about ``hidden_size`` tokens each (``ceil(tokens / hidden_size)``): a shard's
    intermediate is then about the size of one of the MLP's weight matrices."""
    tokens = x.numel() // max(x.shape[-1], 1)
    return max(1, math.ceil(tokens / max(x.shape[-1], 1)))


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


class LigerTiledGatedMLPFunction(LigerFunction):
    """``apply(x, gate_weight, up_weight, down_weight, activation, shards) ->
    down(act(x @ gate_weight.T) * (x @ up_weight.T))`` (``ops.swiglu.gated_mlp_reference``
    without multipliers) in ``shards`` shards of x's rows, with the fused gated kernels. Only x is
    saved; the backward recomputes a shard's a and b, and its one gated-backward pass gives da, db
    and c (for the down weight's gradient). Weight gradients are summed over the shards in fp32 and
    rounded once to the weights' dtype. Kernel path only: callers check ``use_triton``."""

    @staticmethod
    def forward(ctx, x, gate_weight, up_weight, down_weight, activation, shards):
        _check_mlp_inputs(x, gate_weight, up_weight, down_weight, activation)
        if up_weight is None:
            raise ValueError("`up_weight` is required: the tiled gated MLP takes separate gate and up weights.")
        if not isinstance(shards, int) or shards < 1:
            raise ValueError(f"`shards` must be a positive int, got {shards!r}.")
        rows = x.reshape(-1, x.shape[-1])
        y = rows.new_empty(rows.shape[0], down_weight.shape[0])
        for shard, y_shard in zip(rows.tensor_split(shards), y.tensor_split(shards)):
            c = gated_forward(shard @ gate_weight.T, shard @ up_weight.T, activation)
            torch.matmul(c, down_weight.T, out=y_shard)
        ctx.save_for_backward(x, gate_weight, up_weight, down_weight)
        ctx.activation, ctx.shards = activation, shards
        return y.view(*x.shape[:-1], down_weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x, gate_weight, up_weight, down_weight = ctx.saved_tensors
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        rows = x.reshape(-1, x.shape[-1])
        dx = empty_like_output(rows) if need_x else None
        d_gate = d_up = d_down = None
        dy_rows = dy.reshape(-1, dy.shape[-1])
        splits = (t.tensor_split(ctx.shards) for t in (rows, dy_rows))
        dx_shards = dx.tensor_split(ctx.shards) if need_x else [None] * ctx.shards
        for shard, dy_shard, dx_shard in zip(*splits, dx_shards):
            a, b = shard @ gate_weight.T, shard @ up_weight.T
            dc = dy_shard @ down_weight
            gated_backward(dc, a, b, ctx.activation, a, b, need_down)  # da, db over a, b; c over dc
            if need_down:
                d_down = _add_to_sum(d_down, dy_shard.T @ dc)
            if need_gate:
                d_gate = _add_to_sum(d_gate, a.T @ shard)
            if need_up:
                d_up = _add_to_sum(d_up, b.T @ shard)
            if need_x:
                torch.matmul(a, gate_weight, out=dx_shard)
                dx_shard.addmm_(b, up_weight)
            a = b = dc = None  # this shard's intermediates dropped before the next one's
        weights = (gate_weight, up_weight, down_weight)
        weight_grads = (g if g is None else g.to(w.dtype) for g, w in zip((d_gate, d_up, d_down), weights))
        return None if dx is None else dx.view(x.shape), *weight_grads, None, None


@torch.compiler.disable
def _apply_eagerly(cls, fn, mlp_module, x, shards, params):
    """The Function with the parameters unpacked into its trailing inputs; eager under
    ``torch.compile`` (a graph break: ``fn`` and the shard loop are not traced)."""
    return LigerFunction.apply.__func__(cls, fn, mlp_module, x, shards, None, *params)


def apply_tiled_mlp(fn, mlp_module, x, num_shards=None, compute_params=None):
    """``fn(mlp_module, x)`` in ``num_shards`` token shards (default ``default_num_shards``)."""
    shards = default_num_shards(x) if num_shards is None else num_shards
    return LigerTiledMLPFunction.apply(fn, mlp_module, x, shards, compute_params)


def apply_tiled_gated_mlp(x, gate_weight, up_weight, down_weight, activation="silu", num_shards=None):
    """The gated MLP of these weights in ``num_shards`` token shards (default ``default_num_shards``)."""
    shards = default_num_shards(x) if num_shards is None else num_shards
    return LigerTiledGatedMLPFunction.apply(x, gate_weight, up_weight, down_weight, activation, shards)
