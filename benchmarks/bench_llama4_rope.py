"""Llama 4 RoPE (complex frequencies on adjacent pairs; bf16, forward + backward of q and k as
[B, T, H, D]): ours (``liger_llama4_text_rotary_pos_emb``), eager PyTorch (transformers'
``apply_rotary_emb``), ``torch.compile`` of it, and Liger Kernel 0.8.5.

    PYTHONPATH=src python benchmarks/bench_llama4_rope.py --out benchmarks/results/h200/llama4_rope
"""

import functools

import torch
from kernel_bench import main

CASES = {
    "llama4-scout_b2_t4096": dict(batch=2, seq=4096, heads=40, kv_heads=8, head_dim=128),
    "llama4-scout_b1_t16384": dict(batch=1, seq=16384, heads=40, kv_heads=8, head_dim=128),
}
SMOKE = dict(batch=2, seq=7, heads=3, kv_heads=1, head_dim=16)


def eager_llama4_rope(xq, xk, freqs_cis):
    """transformers' ``modeling_llama4.apply_rotary_emb``."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    xq_out = torch.view_as_real(xq_ * freqs_cis[:, :, None, :]).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs_cis[:, :, None, :]).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


@functools.cache
def _compiled():
    return torch.compile(eager_llama4_rope)


def make(shape, device, impl="ours"):
    torch.manual_seed(0)
    b, t, d = shape["batch"], shape["seq"], shape["head_dim"]
    q = torch.randn(b, t, shape["heads"], d, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, t, shape["kv_heads"], d, device=device, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(t, device=device).float().expand(b, t)
    angles = positions[..., None] / (500000 ** (torch.arange(0, d, 2, device=device) / d))
    freqs = torch.polar(torch.ones_like(angles), angles)
    grads = (torch.randn_like(q), torch.randn_like(k))
    if impl in ("eager", "compile"):
        fn = _compiled() if impl == "compile" else eager_llama4_rope
    else:
        from liger_kernel.transformers.llama4_rope import liger_llama4_text_rotary_pos_emb as fn
    return (lambda q, k: fn(q, k, freqs)), (q, k), grads


PROVIDERS = {
    "ours": make,
    "liger085": make,
    "compile": functools.partial(make, impl="compile"),
    "eager": functools.partial(make, impl="eager"),
}

if __name__ == "__main__":
    main(__file__, "Llama 4 RoPE, fwd+bwd", CASES, PROVIDERS, peer=("liger085",), smoke=SMOKE)
