import pytest
import torch
from parity import DEVICE, DTYPES, ON_GPU, as64, assert_matches, randn, sizes

from liger_kernel.ops import rope as rope_ops
from liger_kernel.ops.rope import LigerRopeFunction, rope_backward, rope_forward, rope_reference
from liger_kernel.transformers import liger_rotary_pos_emb, liger_rotary_pos_emb_gpt_oss, liger_rotary_pos_emb_vision
from liger_kernel.transformers.functional import liger_rope

# (B, Hq, Hk, T, D, rotary_dim of cos/sin, why)
SHAPES = sizes(
    cpu=[
        (2, 3, 1, 7, 16, 16, "grouped-query, odd T"),
        (2, 5, 1, 5, 16, 10, "partial rotation, half of 5: masked features and pass-through"),
        (1, 2, 2, 9, 6, 6, "D=6: a half of 3 features"),
    ],
    gpu=[
        (4, 32, 8, 4096, 128, 128, "the anchor shape"),
        (1, 32, 8, 32768, 128, 128, "one long sequence"),
        (3, 5, 1, 333, 96, 64, "odd heads and T, partial rotation of a non-power-of-two head"),
    ],
)


def make_qk(b, hq, hk, t, d, dtype, unsqueeze_dim, hf_layout=True):
    """q, k as HF makes them: projections [B, T, H*D] viewed [B, T, H, D], transposed to [B, H, T, D]
    for ``unsqueeze_dim=1`` (non-contiguous). ``hf_layout=False`` gives the other memory order."""

    def one(h):
        x = randn(b, t, h, d, dtype=dtype) if hf_layout else randn(b, h, t, d, dtype=dtype).transpose(1, 2)
        x = x.transpose(1, 2) if unsqueeze_dim == 1 else x
        return x.requires_grad_()

    return one(hq), one(hk)


def make_cos_sin(b, t, r, layout, dtype):
    """Random cos/sin (no duplicated halves, so every feature's own cos and sin is checked)."""
    shape = {"1TD": (1, t, r), "BTD": (b, t, r), "TD": (t, r)}[layout]
    return randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)


def run_parity(q, k, cos, sin, unsqueeze_dim=1, rotary_dim=None, grads=None):
    """Outputs and q/k gradients of the kernel against float64, PyTorch in q's dtype as the yardstick."""
    dtype = q.dtype
    dq_out, dk_out = grads if grads is not None else (randn(*q.shape, dtype=dtype), randn(*k.shape, dtype=dtype))
    q64, k64 = as64(q, k)
    out64 = rope_reference(q64, k64, cos.double(), sin.double(), None, unsqueeze_dim, rotary_dim)
    ref_grads = torch.autograd.grad(out64, (q64, k64), (dq_out.double(), dk_out.double()))
    qt, kt = (x.detach().clone().requires_grad_() for x in (q, k))
    base = rope_reference(qt, kt, cos, sin, None, unsqueeze_dim, rotary_dim)
    base_grads = torch.autograd.grad(base, (qt, kt), (dq_out, dk_out))

    out = LigerRopeFunction.apply(q, k, cos, sin, None, unsqueeze_dim, rotary_dim)
    got_grads = torch.autograd.grad(out, (q, k), (dq_out, dk_out))
    for name, a, r, bl in zip(
        ("q_out", "k_out", "dq", "dk"), (*out, *got_grads), (*out64, *ref_grads), (*base, *base_grads)
    ):
        assert_matches(name, a, r, bl)
    return out, got_grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
@pytest.mark.parametrize("cos_layout", ["1TD", "BTD", "TD"])
def test_parity(shape, dtype, cos_layout):
    b, hq, hk, t, d, r, _ = shape
    q, k = make_qk(b, hq, hk, t, d, dtype, 1)
    run_parity(q, k, *make_cos_sin(b, t, r, cos_layout, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hf_layout", [True, False], ids=["BTHD-memory", "contiguous"])
def test_unsqueeze_dim_2(dtype, hf_layout):
    """q, k as [B, T, H, D] (the layout flash-attention-style models keep)."""
    b, hq, hk, t, d, r, _ = SHAPES[0]
    q, k = make_qk(b, hq, hk, t, d, dtype, 2, hf_layout)
    run_parity(q, k, *make_cos_sin(b, t, r, "BTD", dtype), unsqueeze_dim=2)


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_explicit_rotary_dim_uses_leading_cos_features(unsqueeze_dim):
    """``rotary_dim`` below cos.shape[-1]: rotate that many features with cos[..., :rotary_dim]."""
    b, hq, hk, t, d = 2, 3, 2, 5, 16
    q, k = make_qk(b, hq, hk, t, d, torch.float32, unsqueeze_dim)
    run_parity(q, k, *make_cos_sin(b, t, d, "1TD", torch.float32), unsqueeze_dim, rotary_dim=6)


def test_outputs_and_gradients_keep_the_input_layout():
    """HF's q is a transposed view of the projection: outputs and gradients keep that memory order
    (what eager HF returns, and what the projection's backward views without a copy)."""
    q, k = make_qk(2, 3, 1, 7, 16, torch.float32, 1)
    cos, sin = make_cos_sin(2, 7, 16, "1TD", torch.float32)
    (qo, ko), (dq, dk) = run_parity(q, k, cos, sin)
    for x, y in ((q, qo), (k, ko), (q, dq), (k, dk)):
        assert y.stride() == x.stride(), (y.stride(), x.stride())
    q2, k2 = (x.detach().contiguous() for x in (q, k))
    assert all(y.is_contiguous() for y in LigerRopeFunction.apply(q2, k2, cos, sin))


def test_non_contiguous_upstream_gradients():
    """An expanded gradient (stride 0, as from ``.sum()``) is read in place; one with its features
    transposed away from unit stride is copied first."""
    b, hq, hk, t, d, r, _ = SHAPES[0]
    q, k = make_qk(b, hq, hk, t, d, torch.bfloat16, 1)
    dq_out = randn(d, t, hq, b, dtype=torch.bfloat16).permute(3, 2, 1, 0)
    dk_out = randn(1, 1, 1, d, dtype=torch.bfloat16).expand(k.shape)
    run_parity(q, k, *make_cos_sin(b, t, r, "BTD", torch.bfloat16), grads=(dq_out, dk_out))


def test_strided_features_and_cos_sin_with_different_strides():
    """q with every other feature (copied: the kernel takes unit feature stride), and sin a slice of
    a wider tensor while cos is dense (both copied: the kernel takes one set of strides for them)."""
    b, hq, hk, t, d, r, _ = SHAPES[0]
    q = randn(b, t, hq, 2 * d)[..., ::2].transpose(1, 2).requires_grad_()
    k = randn(b, t, hk, d).transpose(1, 2).requires_grad_()
    cos = randn(1, t, r)
    sin = randn(1, t, 2 * r)[..., :r]
    run_parity(q, k, cos, sin)


def test_cos_sin_in_float32_with_bf16_q():
    """HF keeps cos/sin in q's dtype, but fp32 tables with bf16 activations happen: math in fp32,
    outputs in q's dtype."""
    b, hq, hk, t, d, r, _ = SHAPES[0]
    q, k = make_qk(b, hq, hk, t, d, torch.bfloat16, 1)
    cos, sin = make_cos_sin(b, t, r, "1TD", torch.float32)
    (qo, ko), (dq, dk) = run_parity(q, k, cos, sin)
    assert qo.dtype == ko.dtype == dq.dtype == dk.dtype == torch.bfloat16


def test_blocks_of_positions_and_chunks_of_heads(monkeypatch, request):
    """Small tiles force the paths realistic shapes take on a GPU: several positions per program
    with a ragged last block, and heads looped over in chunks with a ragged last chunk."""
    monkeypatch.setattr(rope_ops, "MIN_PROGRAMS", 1)
    monkeypatch.setattr(rope_ops, "TILE", 32)  # half of 8 features: 4 heads x 1 position, or 2 x 2 for k
    rope_ops._launch_plan.cache_clear()  # plans are cached per geometry; these use the small tiles
    request.addfinalizer(rope_ops._launch_plan.cache_clear)
    b, hq, hk, t, d = 2, 5, 2, 7, 16
    assert rope_ops._launch_settings(b, t, hq, 8)[:2] == (1, 4)
    assert rope_ops._launch_settings(b, t, hk, 8)[:2] == (2, 2)
    # In the contiguous layout a position past the end aliases the next head's first one, so a
    # ragged block that writes beyond T is caught.
    for (hq_, hk_), hf_layout in (((hq, hk), True), ((hq, hk), False), ((hk, 1), False)):
        q, k = make_qk(b, hq_, hk_, t, d, torch.float32, 1, hf_layout)
        run_parity(q, k, *make_cos_sin(b, t, d, "BTD", torch.float32))


def rope_kernel_variant(monkeypatch, request, **constants):
    """Set ``ops.rope``'s module constants (``SLOTS``, ``TILE``, ...) for one test,
    its launch plans cached without them before and after."""
    for name, value in constants.items():
        monkeypatch.setattr(rope_ops, name, value)
    rope_ops._launch_plan.cache_clear()
    request.addfinalizer(rope_ops._launch_plan.cache_clear)


@pytest.mark.parametrize("tile", [32, 1024], ids=["slot blocks straddling q and k", "one slot block"])
def test_slots(monkeypatch, request, tile):
    """``SLOTS``: a program takes a block of q's and k's heads together. With a 32-element tile (4
    slots of 8 features) blocks hold heads of both and the last is ragged; partial rotation copies
    the pass-through features of both."""
    rope_kernel_variant(monkeypatch, request, SLOTS=True, TILE=tile, MIN_PROGRAMS=1)
    for b, hq, hk, t, d, r, _ in SHAPES:
        q, k = make_qk(b, hq, hk, t, d, torch.float32, 1)
        run_parity(q, k, *make_cos_sin(b, t, r, "BTD", torch.float32), rotary_dim=None if r == d else r)
    q, k = make_qk(2, 5, 2, 7, 16, torch.bfloat16, 2, hf_layout=False)
    run_parity(q, k, *make_cos_sin(2, 7, 16, "1TD", torch.bfloat16), unsqueeze_dim=2)


def test_matches_hugging_face():
    """Same results as transformers' Llama (full) and GPT-NeoX (partial) ``apply_rotary_pos_emb``,
    with cos/sin from the real rotary embedding; the reference is HF's math op for op."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_rope
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope

    b, hq, hk, t, d = 2, 3, 1, 7, 16
    positions = torch.arange(t, device=DEVICE)[None].expand(b, t) + torch.tensor([[0], [5]], device=DEVICE)
    for r, hf in ((d, llama_rope), (d // 2, neox_rope)):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, r, 2, device=DEVICE).float() / r))
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()  # [B, T, r]
        q, k = make_qk(b, hq, hk, t, d, torch.float32, 1)
        ref = hf(q, k, cos, sin)
        assert all(torch.equal(x, y) for x, y in zip(rope_reference(q, k, cos, sin), ref))
        ref64 = hf(*as64(q, k), cos.double(), sin.double())
        for name, x, y, baseline in zip(("q", "k"), liger_rotary_pos_emb(q, k, cos, sin), ref64, ref):
            assert_matches(name, x, y.detach(), baseline)


def test_position_ids_are_ignored_and_functional_entries_agree():
    b, hq, hk, t, d, r, _ = SHAPES[0]
    q, k = make_qk(b, hq, hk, t, d, torch.float32, 1)
    cos, sin = make_cos_sin(b, t, r, "1TD", torch.float32)
    base = LigerRopeFunction.apply(q, k, cos, sin)
    pos = torch.arange(t, device=DEVICE)[None]
    for fn in (liger_rope, liger_rotary_pos_emb):
        for x, y in zip(fn(q, k, cos, sin, pos), base):
            assert torch.equal(x, y)


def test_empty_batch():
    q, k = make_qk(0, 3, 1, 7, 16, torch.float32, 1)
    cos, sin = make_cos_sin(1, 7, 16, "1TD", torch.float32)
    qo, ko = LigerRopeFunction.apply(q, k, cos, sin)
    (qo.sum() + ko.sum()).backward()
    assert qo.shape == q.shape and ko.shape == k.shape


@pytest.mark.skipif(ON_GPU, reason="checks the CPU reference path")
def test_torch_impl_switch(monkeypatch):
    """``LIGER_KERNEL_IMPL=torch`` runs the reference: no kernel launch, same results."""
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")

    def no_kernel(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(rope_ops, "rope_launch", no_kernel)
    b, hq, hk, t, d, r, _ = SHAPES[1]
    q, k = make_qk(b, hq, hk, t, d, torch.bfloat16, 1)
    run_parity(q, k, *make_cos_sin(b, t, r, "TD", torch.bfloat16))


def test_bad_inputs_name_the_argument():
    q, k = make_qk(2, 3, 1, 7, 16, torch.float32, 1)
    cos, sin = make_cos_sin(2, 7, 16, "BTD", torch.float32)
    apply = LigerRopeFunction.apply
    with pytest.raises(TypeError, match="`k` is torch.bfloat16"):
        apply(q, k.bfloat16(), cos, sin)
    with pytest.raises(TypeError, match="`q`"):
        apply(q.long(), k, cos, sin)
    with pytest.raises(ValueError, match="`cos` is on meta"):
        apply(q, k, cos.to("meta"), sin)
    with pytest.raises(ValueError, match="`k` has head_dim 8"):
        apply(q, k[..., :8], cos, sin)
    with pytest.raises(ValueError, match="`k` has shape"):
        apply(q, k[:, :, :5], cos, sin)
    with pytest.raises(ValueError, match="`sin` has shape"):
        apply(q, k, cos, sin[:1])
    with pytest.raises(ValueError, match="`cos` and `sin` must be"):
        apply(q, k, cos[:, :5], sin[:, :5])  # wrong T
    with pytest.raises(ValueError, match="`cos` and `sin` must be"):
        apply(q, k, cos.repeat(2, 1, 1), sin.repeat(2, 1, 1))  # batch 4 for q's 2
    with pytest.raises(ValueError, match="`rotary_dim`"):
        apply(q, k, cos, sin, None, 1, 7)  # odd
    with pytest.raises(ValueError, match="`rotary_dim`"):
        apply(q, k, cos[..., :8], sin[..., :8], None, 1, 12)  # more than cos holds
    with pytest.raises(ValueError, match="`rotary_dim`"):
        apply(q[..., :8], k[..., :8], cos, sin)  # cos wider than the head
    with pytest.raises(ValueError, match="`unsqueeze_dim`"):
        apply(q, k, cos, sin, None, 3)
    with pytest.raises(ValueError, match="`q` must be 4-D"):
        apply(q[0], k, cos, sin)


def hf_parity(ours, theirs, tensors, grads, dtype):
    """``ours(*tensors)`` against ``theirs`` in float64 (outputs and q/k gradients), with ``theirs``
    in ``dtype`` as the yardstick; cos and sin get no gradient."""
    q, k, cos, sin = tensors
    results = []
    for fn, cast in ((ours, dtype), (theirs, torch.float64), (theirs, dtype)):
        qx, kx = (t.detach().to(cast).requires_grad_() for t in (q, k))
        trig = (cos, sin) if cast == dtype else (cos.double(), sin.double())
        out = fn(qx, kx, *trig)
        results.append((*out, *torch.autograd.grad(out, (qx, kx), [g.to(cast) for g in grads])))
    for name, got, ref, base in zip(("q_out", "k_out", "dq", "dk"), *results):
        assert got.dtype == dtype
        assert_matches(name, got, ref, base)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpt_oss_matches_transformers(dtype):
    """GPT-OSS rotates halves with one (not duplicated) angle per pair: cos, sin [B, T, D/2]."""
    from transformers.models.gpt_oss.modeling_gpt_oss import apply_rotary_pos_emb as gpt_oss_rope

    b, hq, hk, t, d = 2, 3, 1, 7, 16
    q, k = make_qk(b, hq, hk, t, d, dtype, 1)
    cos, sin = make_cos_sin(b, t, d // 2, "BTD", dtype)
    grads = (randn(*q.shape, dtype=dtype), randn(*k.shape, dtype=dtype))
    hf_parity(liger_rotary_pos_emb_gpt_oss, gpt_oss_rope, (q, k, cos, sin), grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vision_matches_transformers(dtype):
    """Qwen2-VL's vision RoPE: q, k [S, H, D], cos, sin [S, D] in float32 (as its vision tower
    makes them), math in float32, the result in q's dtype."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    s, h, d = 11, 3, 16
    q, k = randn(s, h, d, dtype=dtype), randn(s, h, d, dtype=dtype)
    freqs = randn(s, d // 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    grads = (randn(s, h, d, dtype=dtype), randn(s, h, d, dtype=dtype))
    hf_parity(liger_rotary_pos_emb_vision, apply_rotary_pos_emb_vision, (q, k, emb.cos(), emb.sin()), grads, dtype)


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_op_helpers(impl, monkeypatch):
    """``rope_forward`` / ``rope_backward``: the Function's outputs and gradients, no autograd."""
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    b, hq, hk, t, d, r, _ = SHAPES[1]
    q, k = make_qk(b, hq, hk, t, d, torch.float32, 1)
    cos, sin = make_cos_sin(b, t, r, "1TD", torch.float32)
    dq, dk = randn(*q.shape), randn(*k.shape)
    out = LigerRopeFunction.apply(q, k, cos, sin)
    expected = torch.autograd.grad(out, (q, k), (dq, dk))
    q_out, k_out, cos_out, sin_out = rope_forward(q.detach(), k.detach(), cos, sin)
    assert cos_out is cos and sin_out is sin
    for name, got, ref in zip(
        ("q", "k", "dq", "dk"), (q_out, k_out, *rope_backward(dq, dk, cos, sin)), (*out, *expected)
    ):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=name)
