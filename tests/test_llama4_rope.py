import pytest
import torch
from parity import DEVICE, DTYPES, check_rotation, randn, sizes
from test_rope import rope_kernel_variant

from liger_kernel.ops.llama4_rope import LigerLlama4RopeFunction, llama4_rope_forward, llama4_rope_reference
from liger_kernel.transformers import liger_llama4_text_rotary_pos_emb, liger_llama4_vision_rotary_pos_emb
from liger_kernel.transformers.llama4_rope import apply_liger_llama4_rope_full

# (B, T, Hq, Hk, D, freqs layout, why)
SHAPES = sizes(
    cpu=[
        (2, 7, 3, 1, 16, "BTD", "grouped-query, odd T, per-sequence positions"),
        (1, 5, 2, 2, 12, "1TD", "6 pairs: masked tail"),
        (2, 3, 2, 1, 8, "TD", "frequencies shared by the batch"),
    ],
    gpu=[
        (2, 4096, 40, 8, 128, "BTD", "Llama 4 Scout"),
        (1, 16384, 40, 8, 128, "1TD", "one long sequence"),
        (3, 333, 5, 1, 80, "TD", "odd heads and T, 40 pairs"),
    ],
)


def make_freqs(b, t, d, layout, dtype=torch.complex64, scale=1.0):
    """Complex frequencies of random angle and magnitude ``scale`` (HF scales by attention_scaling)."""
    shape = {"BTD": (b, t, d // 2), "1TD": (1, t, d // 2), "TD": (t, d // 2)}[layout]
    return torch.polar(torch.full(shape, scale, device=DEVICE), torch.rand(shape, device=DEVICE) * 6.3).to(dtype)


def run_parity(q, k, freqs, apply=LigerLlama4RopeFunction.apply):
    return check_rotation(apply, llama4_rope_reference, q, k, (freqs,), (freqs.to(torch.complex128),))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_parity(shape, dtype):
    b, t, hq, hk, d, layout, _ = shape
    q = randn(b, t, hq, d, dtype=dtype, requires_grad=True)
    k = randn(b, t, hk, d, dtype=dtype, requires_grad=True)
    run_parity(q, k, make_freqs(b, t, d, layout, scale=1.3))


def test_slots(monkeypatch, request):
    """``ops.rope``'s ``SLOTS`` variant on interleaved pairs: blocks of 4 slots across q and k."""
    rope_kernel_variant(monkeypatch, request, SLOTS=True, TILE=32, MIN_PROGRAMS=1)
    for b, t, hq, hk, d, layout, _ in SHAPES:
        q = randn(b, t, hq, d, requires_grad=True)
        k = randn(b, t, hk, d, requires_grad=True)
        run_parity(q, k, make_freqs(b, t, d, layout, scale=1.3))


def test_strided_q_keeps_its_layout():
    """q as a [B, H, T, D] tensor transposed to [B, T, H, D]: outputs and gradients keep its strides."""
    b, t, hq, hk, d = 2, 7, 3, 1, 16
    q = randn(b, hq, t, d).transpose(1, 2).requires_grad_()
    k = randn(b, t, hk, d, requires_grad=True)
    (qo, _), (dq, _) = run_parity(q, k, make_freqs(b, t, d, "BTD"))
    assert qo.stride() == q.stride() and dq.stride() == q.stride()


def test_op_helper_matches_the_function():
    b, t, hq, hk, d = 2, 7, 3, 1, 16
    q, k, freqs = randn(b, t, hq, d), randn(b, t, hk, d), make_freqs(b, t, d, "BTD")
    torch.testing.assert_close(llama4_rope_forward(q, k, freqs), llama4_rope_reference(q, k, freqs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers_text(dtype):
    """Against ``modeling_llama4.apply_rotary_emb`` with the frequencies of its rotary embedding."""
    modeling = pytest.importorskip("transformers.models.llama4.modeling_llama4")
    config = modeling.Llama4TextConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    rotary = modeling.Llama4TextRotaryEmbedding(config).to(DEVICE)
    b, t = 2, 7
    q, k = randn(b, t, 4, 16, dtype=dtype), randn(b, t, 2, 16, dtype=dtype)
    freqs = rotary(q, torch.randint(0, 100, (b, t), device=DEVICE))
    expected = modeling.apply_rotary_emb(q, k, freqs)
    for a, e in zip(liger_llama4_text_rotary_pos_emb(q, k, freqs), expected):
        torch.testing.assert_close(a, e)  # both round an fp32 result once: at most an ulp apart


def test_matches_transformers_vision():
    """Against ``vision_apply_rotary_emb`` with the vision rotary buffer ([S, 1, D/2], CLS last)."""
    modeling = pytest.importorskip("transformers.models.llama4.modeling_llama4")
    config = modeling.Llama4VisionConfig(
        hidden_size=64, num_attention_heads=4, image_size=28, patch_size=14, rope_parameters={"rope_theta": 10000.0}
    )
    freqs_ci = modeling.Llama4VisionRotaryEmbedding(config).freqs_ci.to(DEVICE)
    s = freqs_ci.shape[0]
    q = randn(3, s, 4, 16, requires_grad=True)
    k = randn(3, s, 4, 16, requires_grad=True)
    expected = modeling.vision_apply_rotary_emb(q, k, freqs_ci)
    got = liger_llama4_vision_rotary_pos_emb(q, k, freqs_ci)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(got, (q, k), (torch.ones_like(q), torch.ones_like(k)))
    expected_grads = torch.autograd.grad(expected, (q, k), (torch.ones_like(q), torch.ones_like(k)))
    torch.testing.assert_close(grads, expected_grads, atol=1e-5, rtol=1e-5)


def test_apply_full_swaps_both_rotations():
    class Module:
        apply_rotary_emb = vision_apply_rotary_emb = None

    apply_liger_llama4_rope_full(Module)
    assert Module.apply_rotary_emb is liger_llama4_text_rotary_pos_emb
    assert Module.vision_apply_rotary_emb is liger_llama4_vision_rotary_pos_emb


def test_bad_inputs_name_the_argument():
    q, k = randn(2, 7, 3, 16), randn(2, 7, 1, 16)
    with pytest.raises(TypeError, match="`freqs_cis`"):
        liger_llama4_text_rotary_pos_emb(q, k, randn(2, 7, 8))
    with pytest.raises(ValueError, match="`freqs_cis`"):
        liger_llama4_text_rotary_pos_emb(q, k, make_freqs(2, 7, 12, "BTD"))


def test_pytorch_path(monkeypatch):
    """Where the kernels do not run (a CPU without the interpreter, ``LIGER_KERNEL_IMPL=torch``)."""
    import liger_kernel.ops.llama4_rope as op

    monkeypatch.setattr(op, "use_triton", lambda t: False)
    b, t, hq, hk, d, layout, _ = SHAPES[0]
    q, k = randn(b, t, hq, d, requires_grad=True), randn(b, t, hk, d, requires_grad=True)
    run_parity(q, k, make_freqs(b, t, d, layout))
