import pytest
import torch
from parity import DEVICE, DTYPES, check_rotation, randn, sizes
from test_rope import rope_kernel_variant

from liger_kernel.ops.qwen2vl_mrope import (
    LigerQwen2VLMRopeFunction,
    qwen2vl_mrope_backward,
    qwen2vl_mrope_forward,
    qwen2vl_mrope_reference,
)
from liger_kernel.transformers import liger_multimodal_rotary_pos_emb, liger_rotary_pos_emb
from liger_kernel.transformers.functional import liger_qwen2vl_mrope

# (B, Hq, Hk, T, D, mrope_section, why)
SHAPES = sizes(
    cpu=[
        (2, 3, 1, 7, 16, (2, 3, 3), "grouped-query, odd T, three sections"),
        (1, 2, 2, 5, 12, (1, 2, 3), "half of 6 features: masked tail"),
        (2, 2, 1, 3, 8, (4, 0, 0), "one section: plain RoPE on the temporal plane"),
    ],
    gpu=[
        (2, 16, 2, 4096, 128, (16, 24, 24), "Qwen2.5-VL-3B"),
        (1, 28, 4, 8192, 128, (16, 24, 24), "Qwen2-VL-7B, long"),
        (3, 5, 1, 333, 80, (8, 16, 16), "odd heads and T, a half of 40"),
    ],
)


def make_inputs(b, hq, hk, t, d, dtype, unsqueeze_dim=1, planes_b=None):
    """q, k as HF's projections viewed [B, H, T, D] (non-contiguous); cos, sin [3, B, T, D] random
    (no duplicated halves, so each feature's plane is checked)."""

    def one(h):
        x = randn(b, t, h, d, dtype=dtype)
        return (x.transpose(1, 2) if unsqueeze_dim == 1 else x).requires_grad_()

    planes_b = b if planes_b is None else planes_b
    return one(hq), one(hk), randn(3, planes_b, t, d, dtype=dtype), randn(3, planes_b, t, d, dtype=dtype)


def run_parity(q, k, cos, sin, section, unsqueeze_dim=1, apply=LigerQwen2VLMRopeFunction.apply):
    args = (cos, sin, section, unsqueeze_dim)
    return check_rotation(apply, qwen2vl_mrope_reference, q, k, args, (cos.double(), sin.double(), *args[2:]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_parity(shape, dtype):
    b, hq, hk, t, d, section, _ = shape
    run_parity(*make_inputs(b, hq, hk, t, d, dtype), section)


@pytest.mark.parametrize("tile", [32, 1024], ids=["slot blocks straddling q and k", "one slot block"])
def test_slots(monkeypatch, request, tile):
    """``ops.rope``'s ``SLOTS`` variant, which ``benchmarks/bench_qwen2vl_mrope.py`` measures: the
    same results."""
    rope_kernel_variant(monkeypatch, request, SLOTS=True, TILE=tile, MIN_PROGRAMS=1)
    for dtype in DTYPES:
        for b, hq, hk, t, d, section, _ in SHAPES:
            run_parity(*make_inputs(b, hq, hk, t, d, dtype), section)


@pytest.mark.parametrize("apply", [liger_multimodal_rotary_pos_emb, liger_qwen2vl_mrope], ids=["module", "functional"])
def test_public_entries_bshd_and_broadcast_planes(apply):
    """[B, T, H, D] q/k (``unsqueeze_dim=2``) and planes broadcast over the batch ([3, 1, T, D])."""
    b, hq, hk, t, d, section, _ = SHAPES[0]
    q, k, cos, sin = make_inputs(b, hq, hk, t, d, torch.float32, unsqueeze_dim=2, planes_b=1)
    (qo, ko), (dq, dk) = run_parity(q, k, cos, sin, list(section), unsqueeze_dim=2, apply=apply)
    assert qo.stride() == q.stride() and dq.stride() == q.stride()


def test_op_helpers_match_the_function():
    b, hq, hk, t, d, section, _ = SHAPES[0]
    q, k, cos, sin = make_inputs(b, hq, hk, t, d, torch.float32)
    qo, ko, cos_back, sin_back = qwen2vl_mrope_forward(q.detach(), k.detach(), cos, sin, section)
    assert cos_back is cos and sin_back is sin
    ref = qwen2vl_mrope_reference(q, k, cos, sin, section)
    torch.testing.assert_close((qo, ko), tuple(r.detach() for r in ref))
    dq_out, dk_out = torch.randn_like(qo), torch.randn_like(ko)
    expected = torch.autograd.grad(ref, (q, k), (dq_out, dk_out))
    torch.testing.assert_close(qwen2vl_mrope_backward(dq_out, dk_out, cos, sin, section), expected)


def _qwen_vl_rotary(module, config_cls, mrope_section, head_dim=16, interleaved=False):
    """HF's rotary embedding for a tiny Qwen-VL text config, and the three planes of angles it merges."""
    modeling = pytest.importorskip(f"transformers.models.{module}.modeling_{module}")
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)}
    if interleaved:
        rope["mrope_interleaved"] = True
    config = getattr(modeling, config_cls)(
        hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, rope_parameters=rope
    )
    rotary_cls = next(v for n, v in vars(modeling).items() if n.endswith("RotaryEmbedding") and "Vision" not in n)
    rotary = rotary_cls(config).to(DEVICE)
    return modeling, rotary


@pytest.mark.parametrize(
    "module, config_cls", [("qwen2_vl", "Qwen2VLTextConfig"), ("qwen2_5_vl", "Qwen2_5_VLTextConfig")]
)
def test_matches_transformers_merged_tables(module, config_cls):
    """transformers 5.x merges the planes in its rotary embedding and rotates with the plain
    ``apply_rotary_pos_emb``; M-RoPE on the unmerged planes gives the same result."""
    section = (2, 3, 3)
    modeling, rotary = _qwen_vl_rotary(module, config_cls, section)
    b, t = 2, 7
    position_ids = torch.randint(0, 50, (3, b, t), device=DEVICE)
    q, k = randn(b, 4, t, 16), randn(b, 2, t, 16)
    cos, sin = rotary(q, position_ids)
    expected = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    angles = position_ids[..., None].float() * rotary.inv_freq.float()
    planes = torch.cat((angles, angles), dim=-1)
    got = liger_multimodal_rotary_pos_emb(q, k, planes.cos(), planes.sin(), section)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_qwen3_vl_is_plain_rope_on_interleaved_tables():
    """Qwen3-VL interleaves the sections (T H W T H W ...) while building cos/sin; its
    ``apply_rotary_pos_emb`` is the plain rotate_half one, so ``liger_rotary_pos_emb`` replaces it."""
    modeling, rotary = _qwen_vl_rotary("qwen3_vl", "Qwen3VLTextConfig", (2, 3, 3))
    b, t = 2, 7
    position_ids = torch.randint(0, 50, (3, b, t), device=DEVICE)
    q, k = randn(b, 4, t, 16), randn(b, 2, t, 16)
    cos, sin = rotary(q, position_ids)
    for a, e in zip(liger_rotary_pos_emb(q, k, cos, sin), modeling.apply_rotary_pos_emb(q, k, cos, sin)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "section, cos_shape, match",
    [
        ((2, 3, 2), (3, 2, 7, 16), "mrope_section"),
        ((2, 3), (3, 2, 7, 16), "mrope_section"),
        ((2, 3, 3), (2, 7, 16), r"\[3, B, T, R\]"),
        ((2, 3, 3), (3, 2, 5, 16), "`cos` and `sin`"),
    ],
)
def test_bad_inputs_name_the_argument(section, cos_shape, match):
    q, k = randn(2, 3, 7, 16), randn(2, 1, 7, 16)
    cos = randn(*cos_shape)
    with pytest.raises(ValueError, match=match):
        liger_multimodal_rotary_pos_emb(q, k, cos, cos, section)


def test_pytorch_path(monkeypatch):
    """Where the kernels do not run (a CPU without the interpreter, ``LIGER_KERNEL_IMPL=torch``)."""
    import liger_kernel.ops.qwen2vl_mrope as op

    monkeypatch.setattr(op, "use_triton", lambda t: False)
    b, hq, hk, t, d, section, _ = SHAPES[0]
    run_parity(*make_inputs(b, hq, hk, t, d, torch.float32), section)
    q, k, cos, sin = make_inputs(b, hq, hk, t, d, torch.float32)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    expected = torch.autograd.grad(qwen2vl_mrope_reference(q, k, cos, sin, section), (q, k), (dq, dk))
    torch.testing.assert_close(qwen2vl_mrope_backward(dq, dk, cos, sin, section), expected)
