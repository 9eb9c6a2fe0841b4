"""Qwen2-VL multimodal RoPE (bf16, forward + backward of q and k as HF lays them out: [B, T, H, D]
projections viewed [B, H, T, D]): ours (``liger_multimodal_rotary_pos_emb`` on the [3, B, T, D]
planes), ours on the merged [B, T, D] tables (``liger_rotary_pos_emb``: what transformers 5.x's
attention calls, its rotary embedding having merged them), eager PyTorch (transformers 4.x's
``apply_multimodal_rotary_pos_emb``), ``torch.compile`` of it, and Liger Kernel 0.8.5.

Floor: each direction reads and writes q and k and reads one angle per rotary feature from cos and
sin (the features' own planes), at 4.2 TB/s: qwen2.5-vl-3b_b2_t4096 80 MB a direction, 0.038 ms
fwd+bwd; qwen2-vl-7b_b1_t16384 277 MB, 0.132 ms. Both are well under the host cost of a fwd+bwd on
the lent H200 (~0.2 ms), so ``--graph`` adds the GPU time alone.

Our kernel's alternatives (``ops/rope.py``'s module constants; the default is ``ours``): ``TILE``
elements a program (``_tileN``), ``NUM_WARPS`` (``_wN``); ``_slots``: a program takes one block of
the heads of q and k together, all loaded before any store (``ours`` rotates q's heads, then k's, a
block of up to 16 at a time, each block stored before the next loads): 16 slots a program at
``TILE`` 1024 (3B: q's 16, then k's 2 in a block of their own; 7B: q 0-15, then q 16-27 and k's 4),
32 at 2048 (3B: all 18 in one, 14 masked; 7B: all 32), 8 at 512, 32 of 2 positions at 4096.
Compiled for sm_90 without a GPU (Triton 3.6 and 3.9, ``ptxas -v``): every variant's q and k
accesses are 16-byte vectors (8-byte at ``TILE`` 512), none spills (32-78 registers; ``ours`` 56),
and each feature's angle, gathered from its plane, is read in 16-byte runs too (the section bounds
16 and 40 are multiples of 8 features). Session 9 (H200, GPU ms 3B / 7B): ``TILE`` 2048 0.054 /
0.164, 2048 with 8 warps 0.061 / 0.201, 4096 with 8 warps 0.062 / 0.188, against the default's
0.053 / 0.156. Every variant of ours takes the same host path: their wall times differ by noise
where the host is the bound. ``ours_merged_slots_tile2048``: the plain RoPE kernel (what our
patched transformers 5.x Qwen2-VL and Qwen2.5-VL run) with ``SLOTS``.

    PYTHONPATH=src python benchmarks/bench_qwen2vl_mrope.py --graph --out benchmarks/results/h200/qwen2vl_mrope
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


_DEFAULTS = {}


def _set_rope(**constants):
    """Our RoPE kernel's module constants (``TILE``, ``NUM_WARPS``, ``SLOTS``): the given values, the
    defaults for the others."""
    try:
        from liger_kernel.ops import rope
    except ImportError:  # a peer without that module
        return
    if not hasattr(rope, "_launch_plan"):  # the peer's module
        return
    if not _DEFAULTS:
        _DEFAULTS.update({name: getattr(rope, name) for name in ("TILE", "NUM_WARPS", "SLOTS")})
    for name, default in _DEFAULTS.items():
        setattr(rope, name, constants.get(name, default))
    rope._launch_plan.cache_clear()


def make(shape, device, impl="ours", **constants):
    _set_rope(**constants)
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
    "ours_tile512": functools.partial(make, TILE=512),
    "ours_slots": functools.partial(make, SLOTS=True),
    "ours_slots_tile512": functools.partial(make, SLOTS=True, TILE=512),
    "ours_slots_tile2048_w8": functools.partial(make, SLOTS=True, TILE=2048, NUM_WARPS=8),
    "ours_slots_tile4096_w8": functools.partial(make, SLOTS=True, TILE=4096, NUM_WARPS=8),
    "ours_slots_tile2048": functools.partial(make, SLOTS=True, TILE=2048),
    "ours_merged": functools.partial(make, impl="ours_merged"),
    "ours_merged_slots_tile2048": functools.partial(make, impl="ours_merged", SLOTS=True, TILE=2048),
    "liger085": make,
    "compile": functools.partial(make, impl="compile"),
    "eager": functools.partial(make, impl="eager"),
}

if __name__ == "__main__":
    main(__file__, "Qwen2-VL M-RoPE, fwd+bwd", CASES, PROVIDERS, peer=("liger085",), smoke=SMOKE)
