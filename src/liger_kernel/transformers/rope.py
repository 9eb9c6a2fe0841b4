"""RoPE for Hugging Face attention layers: a drop-in for ``apply_rotary_pos_emb``."""

from liger_kernel.ops.rope import LigerRopeFunction


def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
    """Rotary position embedding of q and k, as HF's ``apply_rotary_pos_emb`` (rotate_half layout).

    q [B, Hq, T, D] and k [B, Hk, T, D] (or [B, T, H, D] with ``unsqueeze_dim=2``); cos, sin
    [1, T, R], [B, T, R] or [T, R]. The first ``rotary_dim`` (default R) features of each head are
    rotated, the rest pass through (HF's partial-rotary models). ``position_ids`` is accepted for
    compatibility and ignored, as in HF: cos/sin are already gathered per position.
    Returns ``(q_embed, k_embed)`` in q's and k's shapes, dtype and memory layout.
    """
    return LigerRopeFunction.apply(q, k, cos, sin, position_ids, unsqueeze_dim, rotary_dim)
