"""Qwen2-VL multimodal RoPE (bf16, forward + backward of q and k as HF lays them out: [B, T, H, D]
projections viewed [B, H, T, D]): ours (``liger_multimodal_rotary_pos_emb`` on the [3, B, T, D]
planes), ours on the merged [B, T, D] tables (``liger_rotary_pos_emb``: what transformers 5.x's
attention calls, its rotary embedding having merged them), eager PyTorch (transformers 4.x's
``apply_multimodal_rotary_pos_emb``), ``torch.compile`` of it, and Liger Kernel 0.8.5.

    PYTHONPATH=src python benchmarks/bench_qwen2vl_mrope.py --out benchmarks/results/h200/qwen2vl_mrope
"""

import functools

import torch
from kernel_bench import main

CASES = {
    "qwen2.5-vl-3b_b2_t4096": dict(batch=2, seq=4096, heads=16, kv_heads=2, head_dim=128, section=(16, 24, 24)),
    "qwen2-vl-7b_b1_t16384": dict(batch=1, seq=16384, heads=28, kv_heads=4, head_dim=128, section=(16, 24, 24)),
}
SMOKE = dict(batch=2, seq=7, heads=3, kv_heads=1, head_dim=16, section=(2, 3, 3))


def merge(planes, section):
    return torch.cat([m[i % 3] for i, m in enumerate(planes.split(list(section) * 2, dim=-1))], dim=-1)


def eager_mrope(q, k, cos, sin, section):
    """transformers 4.x ``apply_multimodal_rotary_pos_emb``."""
    cos, sin = merge(cos, section).unsqueeze(1), merge(sin, section).unsqueeze(1)

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


@functools.cache
def _compiled():
    return torch.compile(eager_mrope)


def _inputs(shape, device):
    torch.manual_seed(0)
    b, t, d = shape["batch"], shape["seq"], shape["head_dim"]

    def qk(h):
        return torch.randn(b, t, h, d, device=device, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()

    q, k = qk(shape["heads"]), qk(shape["kv_heads"])
    positions = torch.randint(0, t, (3, b, t, 1), device=device).float()
    angles = positions / (10000 ** (torch.arange(0, d, 2, device=device) / d))
    angles = torch.cat((angles, angles), dim=-1)
    grads = (torch.randn_like(q), torch.randn_like(k))
    return q, k, angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16), grads


def make(shape, device, impl="ours"):
    q, k, cos, sin, grads = _inputs(shape, device)
    section = shape["section"]
    if impl in ("eager", "compile"):
        fn = _compiled() if impl == "compile" else eager_mrope
        return (lambda q, k: fn(q, k, cos, sin, section)), (q, k), grads
    if impl == "ours_merged":
        from liger_kernel.transformers import liger_rotary_pos_emb

        cos, sin = merge(cos, section), merge(sin, section)
        return (lambda q, k: liger_rotary_pos_emb(q, k, cos, sin)), (q, k), grads
    from liger_kernel.transformers.qwen2vl_mrope import liger_multimodal_rotary_pos_emb

    return (lambda q, k: liger_multimodal_rotary_pos_emb(q, k, cos, sin, section)), (q, k), grads


PROVIDERS = {
    "ours": make,
    "ours_merged": functools.partial(make, impl="ours_merged"),
    "liger085": make,
    "compile": functools.partial(make, impl="compile"),
    "eager": functools.partial(make, impl="eager"),
}

if __name__ == "__main__":
    main(__file__, "Qwen2-VL M-RoPE, fwd+bwd", CASES, PROVIDERS, peer=("liger085",), smoke=SMOKE)
