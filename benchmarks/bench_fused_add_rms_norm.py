"""Residual add + RMSNorm at Llama shapes (bf16, forward + backward of both outputs): ours fused
(``LigerFusedAddRMSNorm``), the add then our ``LigerRMSNorm``, eager PyTorch (HF's add then
``LlamaRMSNorm`` math), ``torch.compile`` of it, and Liger Kernel 0.8.5's ``LigerFusedAddRMSNorm``.

Floor: the fused op moves 8 passes of a [tokens, hidden] bf16 tensor (forward reads X, R, writes S,
Y; backward reads dY, dS, S, writes dX), at 4.2 TB/s: 0.256 ms for llama3-8b_16k and llama3-70b_8k
(134 MB a pass), 0.064 ms for qwen2.5-vl-3b_8k (34 MB); the add then RMSNorm moves 11 (0.351 ms).
``ours_tile32`` / ``ours_tile8``: ours with the backward's row tile at up to 32 / 8 elements a
thread where the residual gradient is added (``RESIDUAL_TILE_PER_THREAD``; ours: 16). At 4096
columns: 4 rows over 16 warps (RMSNorm's tile, which spills there), 2 rows (the default), 1 row.

    PYTHONPATH=src python benchmarks/bench_fused_add_rms_norm.py --out benchmarks/results/h200/fused_add_rms_norm
    PYTHONPATH=src python benchmarks/bench_fused_add_rms_norm.py --smoke
"""

import functools

import torch
from kernel_bench import main

EPS = 1e-5
CASES = {
    "llama3-8b_16k": dict(tokens=16384, hidden=4096),
    "llama3-70b_8k": dict(tokens=8192, hidden=8192),
    "qwen2.5-vl-3b_8k": dict(tokens=8192, hidden=2048),
}
SMOKE = dict(tokens=5, hidden=37)


def _inputs(shape, device):
    torch.manual_seed(0)
    x, r, dy, ds = (
        torch.randn(shape["tokens"], shape["hidden"], device=device, dtype=torch.bfloat16) for _ in range(4)
    )
    return x.requires_grad_(), r.requires_grad_(), (dy, ds)


def eager_add_rms_norm(x, r, w):
    s = x + r
    h = s.float()
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return w * y.to(s.dtype), s


@functools.cache
def _compiled():
    return torch.compile(eager_add_rms_norm)


def _weight(shape, device):
    return (1 + 0.1 * torch.randn(shape["hidden"], device=device)).to(torch.bfloat16).requires_grad_()


def make_eager(shape, device, compiled=False):
    x, r, grads = _inputs(shape, device)
    return (_compiled() if compiled else eager_add_rms_norm), (x, r, _weight(shape, device)), grads


def make_module(shape, device, fused=True, tile_per_thread=16):
    """Ours or the peer's ``LigerFusedAddRMSNorm`` (``fused``), or the add then ``LigerRMSNorm``;
    ours with its backward tile at ``tile_per_thread`` elements a thread (16: the default)."""
    import liger_kernel.transformers as lt

    try:
        from liger_kernel.ops import fused_add_rms_norm as op
    except ImportError:  # a peer without that module
        op = None
    if hasattr(op, "RESIDUAL_TILE_PER_THREAD"):  # ours (set for every provider: they run in turn)
        op.RESIDUAL_TILE_PER_THREAD = tile_per_thread
    x, r, grads = _inputs(shape, device)
    if fused:
        norm = lt.LigerFusedAddRMSNorm(shape["hidden"], eps=EPS).to(device, torch.bfloat16)
        return lambda x, r, w: norm(x, r), (x, r, norm.weight), grads
    norm = lt.LigerRMSNorm(shape["hidden"], eps=EPS).to(device, torch.bfloat16)

    def add_then_norm(x, r, w):
        s = x + r
        return norm(s), s

    return add_then_norm, (x, r, norm.weight), grads


PROVIDERS = {
    "ours": make_module,
    "ours_tile32": functools.partial(make_module, tile_per_thread=32),
    "ours_tile8": functools.partial(make_module, tile_per_thread=8),
    "ours_add_then_rms_norm": functools.partial(make_module, fused=False),
    "liger085": make_module,
    "compile": functools.partial(make_eager, compiled=True),
    "eager": make_eager,
}

if __name__ == "__main__":
    main(__file__, "Residual add + RMSNorm, fwd+bwd", CASES, PROVIDERS, peer=("liger085",), smoke=SMOKE)
