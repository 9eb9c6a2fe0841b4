"""Llama 4's RoPE (complex frequencies, adjacent feature pairs) for the text and vision attention."""

from liger_kernel.ops.library import apply_of
from liger_kernel.ops.llama4_rope import LigerLlama4RopeFunction


def liger_llama4_text_rotary_pos_emb(xq, xk, freqs_cis):
    """Drop-in for ``modeling_llama4.apply_rotary_emb``: xq [B, T, Hq, D], xk [B, T, Hk, D],
    ``freqs_cis`` complex [B, T, D/2] (or [1, T, D/2], [T, D/2]). Returns ``(xq_out, xk_out)``
    in xq's and xk's dtypes and layouts."""
    return apply_of(LigerLlama4RopeFunction, "llama4_rope")(xq, xk, freqs_cis)


def liger_llama4_vision_rotary_pos_emb(query, key, freqs_ci):
    """Drop-in for ``modeling_llama4.vision_apply_rotary_emb``: query, key [N, S, H, D] (tiles,
    patches, heads, features) and ``freqs_ci`` complex with S x D/2 elements (the vision rotary
    embedding's [S, 1, D/2] buffer), shared by every tile and moved to query's device as HF does."""
    freqs = freqs_ci.reshape(query.shape[1], query.shape[-1] // 2).to(query.device)
    return apply_of(LigerLlama4RopeFunction, "llama4_rope")(query, key, freqs)


def apply_liger_llama4_rope_full(modeling_module):
    """Swap both Llama 4 rotations of ``modeling_module`` (``transformers.models.llama4.modeling_llama4``
    or a module with the same two functions) for ours."""
    modeling_module.apply_rotary_emb = liger_llama4_text_rotary_pos_emb
    modeling_module.vision_apply_rotary_emb = liger_llama4_vision_rotary_pos_emb
