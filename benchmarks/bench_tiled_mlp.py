"""Long-sequence SwiGLU MLP (Llama-3-8B widths, bf16, forward + backward): ours tiled
(``LigerTiledSwiGLUMLP``, default shards), ours untiled (``LigerSwiGLUMLP``), eager PyTorch (HF's
``LlamaMLP`` math), ``torch.compile`` of it (``compile_untiled``), ``torch.compile`` of it in the same
token shards as ours, each shard under ``torch.utils.checkpoint`` (``compile_tiled``: what a user gets
compiling a plain-PyTorch tiled MLP; the partitioner recomputes a shard's gate and up in the backward,
as ours does, and autograd sums the shards' weight gradients in bf16), and Liger Kernel 0.8.5's
``LigerTiledSwiGLUMLP``. The point is the peak memory: the tiled MLP trades recomputed matmuls for it.
Every provider gets the same x, weights and output gradient (seed 0). ``ours_generic``: the
generic tiled Function around the untiled forward (what non-plain projections take), recomputing
the whole forward. ``ours`` picks its backward's route by bytes (blocks of the intermediate at 16K
tokens, token shards at 64K); ``ours_blocks`` / ``ours_tokens`` force one (``ours_blocksN``: N
blocks), ``ours_tokens_2048`` the token shards at 2048 tokens, not H (half the shard buffers, twice
the fp32 weight-sum traffic).

Liger 0.8.5 adds its weight gradients into ``.grad`` inside its backward: the warm-up step allocates
them and the measured step's peak (counted from the memory before it) leaves them out, 3 x 112 MiB
at these widths, where ours and compile's, returned by ``autograd.grad``, are in. ``liger085_grads``
is Liger with ``.grad`` set to None before each step, its weight gradients counted as ours are.

Floor (matmul FLOPs at 684 TFLOP/s, the H200's measured bf16 rate): untiled 18 x T x H x I, 25.3 ms
at 16K tokens and 101 ms at 64K; ours 22 (the gate and up matmuls recomputed), 30.9 / 124 ms; the
generic recompute 24, 33.8 / 135 ms. A tiled MLP cannot match the untiled ones' time (compile_untiled,
eager, ours_untiled): against them it is their memory it must beat; against Liger 0.8.5's tiled
MLP and compile_tiled, both.

    PYTHONPATH=src python benchmarks/bench_tiled_mlp.py --out benchmarks/results/h200/tiled_mlp
"""

import functools
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from kernel_bench import main
from torch.utils.checkpoint import checkpoint

CASES = {
    "llama3-8b_t16384": dict(tokens=16384, hidden=4096, intermediate=14336),
    "llama3-8b_t65536": dict(tokens=65536, hidden=4096, intermediate=14336),
    # the shorter sequences of an e2e step (tiled_mlp=True): Gemma-3-4B's widths at 2 x 2048 tokens
    # (its GeGLU costs what this SwiGLU does), Llama-3.2-1B's at 8 x 2048
    "gemma3-4b_t4096": dict(tokens=4096, hidden=2560, intermediate=10240),
    "llama3.2-1b_t16384": dict(tokens=16384, hidden=2048, intermediate=8192),
}
SMOKE = dict(tokens=9, hidden=16, intermediate=24)


def eager_mlp(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def tiled_eager_mlp(x, gate, up, down):
    """``eager_mlp`` in ``ceil(tokens / H)`` token shards (ours' default), each checkpointed."""
    rows = x.reshape(-1, x.shape[-1])
    shards = rows.tensor_split(-(-rows.shape[0] // rows.shape[1]))
    outs = [checkpoint(eager_mlp, shard, gate, up, down, use_reentrant=False) for shard in shards]
    return torch.cat(outs).view(*x.shape[:-1], down.shape[0])


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)  # each case compiled for its shape


def make(shape, device, impl="ours"):
    torch.manual_seed(0)
    config = SimpleNamespace(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], hidden_act="silu")
    x = torch.randn(1, shape["tokens"], shape["hidden"], device=device, dtype=torch.bfloat16, requires_grad=True)
    grads = (torch.randn_like(x),)
    weights = [
        (torch.randn(o, i, device=device) * i**-0.5).to(torch.bfloat16).requires_grad_()
        for o, i in ((shape["intermediate"], shape["hidden"]),) * 2 + ((shape["hidden"], shape["intermediate"]),)
    ]
    if impl in ("eager", "compile_untiled", "compile_tiled"):
        fn = eager_mlp if impl == "eager" else _compiled(tiled_eager_mlp if impl == "compile_tiled" else eager_mlp)
        return fn, (x, *weights), grads
    import liger_kernel.transformers as lt

    mlp = (lt.LigerSwiGLUMLP if impl == "ours_untiled" else lt.LigerTiledSwiGLUMLP)(config).to(device, torch.bfloat16)
    params = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    with torch.no_grad():
        for param, weight in zip(params, weights):
            param.copy_(weight)
    if impl == "ours_generic":
        from liger_kernel.ops.tiled_mlp import apply_tiled_mlp

        return (lambda x, *weights: apply_tiled_mlp(lt.LigerSwiGLUMLP.forward, mlp, x)), (x, *params), grads
    if impl.startswith("ours_blocks") or impl in ("ours_tokens", "ours_tokens_2048"):
        from liger_kernel.ops.tiled_mlp import apply_tiled_gated_mlp, default_num_blocks

        blocks = default_num_blocks(shape["hidden"], shape["intermediate"]) if impl == "ours_blocks" else 0
        blocks = int(impl.removeprefix("ours_blocks")) if impl[len("ours_blocks") :].isdigit() else blocks
        shards = -(-shape["tokens"] // 2048) if impl == "ours_tokens_2048" else None
        return (lambda x, *w: apply_tiled_gated_mlp(x, *w, num_shards=shards, num_blocks=blocks)), (x, *params), grads
    if impl == "fresh_grads":

        def fn(x, *weights):
            for w in weights:
                w.grad = None
            return mlp(x)

        return fn, (x, *params), grads
    return (lambda x, *weights: mlp(x)), (x, *params), grads


PROVIDERS = {
    "ours": make,
    "ours_generic": functools.partial(make, impl="ours_generic"),
    "ours_untiled": functools.partial(make, impl="ours_untiled"),
    "ours_blocks": functools.partial(make, impl="ours_blocks"),
    **{f"ours_blocks{n}": functools.partial(make, impl=f"ours_blocks{n}") for n in (2, 4, 8)},
    "ours_tokens": functools.partial(make, impl="ours_tokens"),
    "ours_tokens_2048": functools.partial(make, impl="ours_tokens_2048"),
    "liger085": make,
    "liger085_grads": functools.partial(make, impl="fresh_grads"),
    "compile_untiled": functools.partial(make, impl="compile_untiled"),
    "compile_tiled": functools.partial(make, impl="compile_tiled"),
    "eager": functools.partial(make, impl="eager"),
}

if __name__ == "__main__":
    main(__file__, "Tiled SwiGLU MLP, fwd+bwd", CASES, PROVIDERS, peer=("liger085", "liger085_grads"), smoke=SMOKE)
