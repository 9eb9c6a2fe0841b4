"""Qwen2-VL's multimodal RoPE (M-RoPE): RoPE whose angles come from three position sets.

Each token has temporal, height and width positions; cos and sin arrive as [3, B, T, R], one plane
per set, and ``mrope_section`` (three sizes summing to R/2) says which features take which plane:
in each half of the rotary features, the first ``mrope_section[0]`` from the temporal plane, the
next ``mrope_section[1]`` from the height plane, the rest from the width plane. After that choice it
is the rotate_half RoPE, so it runs on the RoPE kernel of ``ops.rope``, which reads each feature's
angle from its plane in place: no merged [B, T, R] tables are built (HF builds two, with six slices
and two concatenations).
"""

import torch

from liger_kernel.ops.rope import (
    LigerRopeFunction,
    check_mrope_section,
    check_rope_shapes,
    check_rope_tensors,
    reference_backward,
    rope_launch,
    rope_reference,
    save_launch,
)
from liger_kernel.ops.utils import fallback_forward
from liger_kernel.utils import use_triton


def merge_mrope_sections(cos, mrope_section):
    """[3, B, T, R] planes to the [B, T, R] table M-RoPE rotates with (HF's concatenation)."""
    return torch.cat([m[i % 3] for i, m in enumerate(cos.split(list(mrope_section) * 2, dim=-1))], dim=-1)


def qwen2vl_mrope_reference(q, k, cos, sin, mrope_section, unsqueeze_dim=1):
    """The spec: transformers' ``apply_multimodal_rotary_pos_emb`` (Qwen2-VL, Qwen2.5-VL; 4.x).

    q [B, Hq, T, D], k [B, Hk, T, D] (``unsqueeze_dim=1``) or [B, T, H, D] (2); cos, sin
    [3, B or 1, T, R] with ``sum(mrope_section) == R / 2``; the first R features of each head are
    rotated (R = D in Qwen2-VL), the rest pass through.
    """
    _check_sections(cos, sin, mrope_section)
    return rope_reference(
        q, k, merge_mrope_sections(cos, mrope_section), merge_mrope_sections(sin, mrope_section), None, unsqueeze_dim
    )


def _sections(mrope_section) -> tuple:
    """The sections as a tuple of ints (the launch plan's cache key)."""
    return tuple(map(int, mrope_section))


def _check_sections(cos, sin, mrope_section) -> tuple:
    for t in (cos, sin):
        check_mrope_section(t.shape, mrope_section)
    return _sections(mrope_section)


def _check_shapes(q, k, cos, sin, mrope_section, unsqueeze_dim) -> tuple:
    """Sections as a tuple of ints, after checking every shape (errors name the argument)."""
    sections = _check_sections(cos, sin, mrope_section)
    check_rope_shapes(q.shape, k.shape, cos.shape[1:], sin.shape[1:], unsqueeze_dim, None)
    return sections


class LigerQwen2VLMRopeFunction(LigerRopeFunction):
    """M-RoPE on q and k with one fused Triton launch each way; see ``qwen2vl_mrope_reference``.

    ``forward(q, k, cos, sin, mrope_section, unsqueeze_dim=1) -> (q_out, k_out)``, new tensors in
    the memory layouts of q and k; cos and sin get no gradient. The backward is RoPE's.
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, mrope_section, unsqueeze_dim=1):
        check_rope_tensors(q, k, cos, sin)
        ctx.use_triton = use_triton(q)
        if not ctx.use_triton:
            sections = _check_shapes(q, k, cos, sin, mrope_section, unsqueeze_dim)
            return fallback_forward(
                ctx, qwen2vl_mrope_reference, q, k, cos.detach(), sin.detach(), sections, unsqueeze_dim
            )
        sections = _sections(mrope_section)  # the launch plan checks the shapes (once per geometry)
        qo, ko, plan = rope_launch(q, k, cos, sin, unsqueeze_dim, None, False, mrope_section=sections)
        save_launch(ctx, plan, cos, sin, unsqueeze_dim, sections)
        return qo, ko


def qwen2vl_mrope_forward(q, k, cos, sin, mrope_section, unsqueeze_dim=1):
    """The peer's op helper: ``(q_embed, k_embed, cos, sin)``, M-RoPE of q and k without autograd;
    cos and sin are handed back for ``qwen2vl_mrope_backward``."""
    check_rope_tensors(q, k, cos, sin)
    if not use_triton(q):
        sections = _check_shapes(q, k, cos, sin, mrope_section, unsqueeze_dim)
        return (*qwen2vl_mrope_reference(q, k, cos, sin, sections, unsqueeze_dim), cos, sin)
    qo, ko, _ = rope_launch(q, k, cos, sin, unsqueeze_dim, None, False, mrope_section=_sections(mrope_section))
    return qo, ko, cos, sin


def qwen2vl_mrope_backward(dq, dk, cos, sin, mrope_section, unsqueeze_dim=1):
    """The peer's op helper: ``(dq_in, dk_in)``, the gradients of q and k for the upstream ``dq``,
    ``dk`` of ``qwen2vl_mrope_forward`` (the inverse rotation), as new tensors."""
    check_rope_tensors(dq, dk, cos, sin)
    if not use_triton(dq):
        sections = _check_shapes(dq, dk, cos, sin, mrope_section, unsqueeze_dim)
        return reference_backward(qwen2vl_mrope_reference, dq, dk, cos, sin, sections, unsqueeze_dim)
    dq_in, dk_in, _ = rope_launch(dq, dk, cos, sin, unsqueeze_dim, None, True, mrope_section=_sections(mrope_section))
    return dq_in, dk_in
