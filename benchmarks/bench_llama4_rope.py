"""Llama 4 RoPE (complex frequencies on adjacent pairs; bf16, forward + backward of q and k as
[B, T, H, D]): ours (``liger_llama4_text_rotary_pos_emb``), eager PyTorch (transformers'
``apply_rotary_emb``), ``torch.compile`` of it, and Liger Kernel 0.8.5.

In place: ours and Liger Kernel 0.8.5 rotate q and k in place. So every provider gets q and k as a
model's attention makes them, ``Projection`` outputs (standing in for ``q_proj``, no cost) viewed
[B, T, H, D]; each step rotates the same buffers again (the same work: a rotation). The memory
column counts what a step allocates: the new input gradients included. The upstream gradients
are the harness's, which it keeps: Liger Kernel 0.8.5 writes the input gradients over them
(0 MB); ours never writes over a gradient someone else holds (``rope.owned_grads``) and gives
them their own buffers (q + k: 96 MB at llama4-scout_b2_t4096, 192 MB at llama4-scout_b1_t16384).

    PYTHONPATH=src python benchmarks/bench_llama4_rope.py --graph --out benchmarks/results/h200/llama4_rope
"""

import functools

import torch
from kernel_bench import Projection, main

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
    heads = shape["heads"], shape["kv_heads"]
    sources = [torch.randn(b, t, h * d, device=device, dtype=torch.bfloat16, requires_grad=True) for h in heads]

    def q_and_k(q_source, k_source):
        return [Projection.apply(x).view(b, t, h, d) for x, h in zip((q_source, k_source), heads)]

    positions = torch.arange(t, device=device).float().expand(b, t)
    angles = positions[..., None] / (500000 ** (torch.arange(0, d, 2, device=device) / d))
    freqs = torch.polar(torch.ones_like(angles), angles)
    grads = [torch.randn(b, t, h, d, device=device, dtype=torch.bfloat16) for h in heads]
    if impl in ("eager", "compile"):
        fn = _compiled() if impl == "compile" else eager_llama4_rope
    else:
        from liger_kernel.transformers.llama4_rope import liger_llama4_text_rotary_pos_emb as fn
    return (lambda *qk: fn(*q_and_k(*qk), freqs)), sources, grads


PROVIDERS = {
    "ours": make,
    "liger085": make,
    "compile": functools.partial(make, impl="compile"),
    "eager": functools.partial(make, impl="eager"),
}

if __name__ == "__main__":
    main(__file__, "Llama 4 RoPE, fwd+bwd", CASES, PROVIDERS, peer=("liger085",), smoke=SMOKE)
