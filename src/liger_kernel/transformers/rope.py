"""RoPE for Hugging Face attention layers: drop-ins for ``apply_rotary_pos_emb`` and its variants."""

import torch

from liger_kernel.ops.library import apply_of
from liger_kernel.ops.rope import LigerRopeFunction


def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """Rotary position embedding of q and k, as HF's ``apply_rotary_pos_emb`` (rotate_half layout).

    q [B, Hq, T, D] and k [B, Hk, T, D] (or [B, T, H, D] with ``unsqueeze_dim=2``); cos, sin
    [1, T, R], [B, T, R] or [T, R]. The first ``rotary_dim`` (default R) features of each head are
    rotated, the rest pass through (HF's partial-rotary models). ``position_ids`` is accepted for
    compatibility and ignored, as in HF: cos/sin are already gathered per position.
    Returns ``(q_embed, k_embed)`` in q's and k's shapes, dtype and memory layout.
    """
    return apply_of(LigerRopeFunction, "rope")(q, k, cos, sin, position_ids, unsqueeze_dim, rotary_dim)


def liger_rotary_pos_emb_gpt_oss(q, k, cos, sin):
    """GPT-OSS's ``apply_rotary_pos_emb``: q [B, Hq, T, D], k [B, Hk, T, D] and cos, sin
    [B, T, D/2] (one angle per pair, not duplicated), ``out = (x1 * cos - x2 * sin, x2 * cos + x1 *
    sin)`` for the halves x1, x2 of each head: the rotate_half rotation with cos and sin repeated
    over both halves, which is how our kernel gets them (a [B, T, D] copy, small beside q)."""
    return apply_of(LigerRopeFunction, "rope")(q, k, torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1))


def liger_rotary_pos_emb_vision(q, k, cos, sin):
    """Qwen2-VL's ``apply_rotary_pos_emb_vision`` (and the vision towers that copy it): q, k
    [S, H, D] (patches, heads, features), cos, sin [S, D] in rotate_half layout; the result in
    q's and k's dtypes. HF computes in fp32 and rounds once, as the kernel does (cos and sin
    enter in their own dtype); on the PyTorch path cos and sin are first cast to q's dtype."""
    q_embed, k_embed = apply_of(LigerRopeFunction, "rope")(q.unsqueeze(0), k.unsqueeze(0), cos, sin, None, 2)
    return q_embed.squeeze(0), k_embed.squeeze(0)
