"""Qwen2-VL's multimodal RoPE, a drop-in for transformers 4.x's ``apply_multimodal_rotary_pos_emb``.

transformers 5.x merges the sections inside the rotary embedding (``recomposition_frequencies``, and
Qwen3-VL's interleaved layout there too) and its attention calls the plain ``apply_rotary_pos_emb``:
for those models patch that with ``liger_rotary_pos_emb``. This one is for code that still hands
the three planes of angles to the rotation.
"""

from liger_kernel.ops.library import apply_of
from liger_kernel.ops.qwen2vl_mrope import LigerQwen2VLMRopeFunction


def liger_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section, unsqueeze_dim=1):
    """M-RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] (or [B, T, H, D] with ``unsqueeze_dim=2``).

    cos, sin [3, B, T, D]: angles of the temporal, height and width positions; ``mrope_section``
    (e.g. [16, 24, 24], summing to D/2) says how many features of each half take each plane.
    Returns ``(q_embed, k_embed)`` in q's and k's shapes, dtype and memory layout.
    """
    return apply_of(LigerQwen2VLMRopeFunction, "qwen2vl_mrope")(q, k, cos, sin, mrope_section, unsqueeze_dim)
