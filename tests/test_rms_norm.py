import pytest
import torch
from parity import DEVICE, DTYPES, ON_GPU, as64, assert_matches, randn, sizes

import liger_kernel.ops.norms as norms
from liger_kernel.ops.rms_norm import LigerRMSNormFunction, rms_norm_reference
from liger_kernel.transformers import LigerRMSNorm
from liger_kernel.transformers.functional import liger_rms_norm

# (casting_mode, offset) as the model families use them.
MODES = [("llama", 0.0), ("gemma", 1.0), ("none", 0.0)]
SHAPES = sizes(
    # odd rows narrower than a block, several rows per program and two tiles, just past 2048
    cpu=[(3, 5, 37), (67, 45), (7, 2049)],
    # Llama-8B / 70B widths, rows in four column blocks in the backward (16384; 12000: the last
    # one masked), rows of 65536 looped both ways
    gpu=[(16384, 4096), (8192, 8192), (4096, 16384), (1000, 12000), (2, 65536), (3, 333, 5000)],
)
EPS = 1e-6


def run_parity(shape, dtype, mode, offset, with_weight=True, w_dtype=None):
    hidden = shape[-1]
    x = randn(*shape, dtype=dtype, requires_grad=True)
    w = randn(hidden, dtype=w_dtype or dtype, requires_grad=True, scale=0.5) if with_weight else None
    if w is not None and offset == 0.0:
        w = (w.detach() + 1.0).requires_grad_()  # Llama-like weights around 1
    dy = randn(*shape, dtype=dtype)
    x64, w64 = as64(x, w)
    rms_norm_reference(x64, w64, EPS, offset, mode).backward(dy.double())
    y64 = rms_norm_reference(*as64(x, w), EPS, offset, mode).detach()
    # PyTorch in the same dtypes: the yardstick for rounding error.
    xt, wt = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w)]
    yt = rms_norm_reference(xt, wt, EPS, offset, mode)
    yt.backward(dy)

    y = LigerRMSNormFunction.apply(x.clone(), w, EPS, offset, mode)
    y.backward(dy)
    assert y.dtype == dtype
    assert_matches("out", y, y64, yt)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    if w is not None:
        assert w.grad.dtype == w.dtype
        assert_matches("dW", w.grad, w64.grad, wt.grad)


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(shape, dtype, mode, offset):
    run_parity(shape, dtype, mode, offset)


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_weight(dtype, mode, offset):
    run_parity(SHAPES[0], dtype, mode, offset, with_weight=False)


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_weight_with_half_input(dtype, mode, offset):
    """Mixed precision: fp32 parameters, half activations; the output stays in X's dtype."""
    run_parity(SHAPES[-1], dtype, mode, offset, w_dtype=torch.float32)


def test_llama_mode_rounds_x_hat_before_the_weight():
    """HF's Llama multiplies the weight by x_hat already rounded to X's dtype. With an fp32
    weight the weight gradient shows that rounding (~2e-3 relative) above fp32 sum-order noise."""
    x = randn(7, 2049, dtype=torch.bfloat16, requires_grad=True)
    w = (randn(2049) + 1.0).requires_grad_()
    dy = randn(7, 2049, dtype=torch.bfloat16)
    LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False).backward(dy)
    xt, wt = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    rms_norm_reference(xt, wt, EPS).backward(dy)
    # Mean, not max: an fp32 rstd one ulp off (kernel 1/sqrt vs torch.rsqrt on a GPU) may flip the
    # rounding of a rare x_hat element; skipping the rounding moves every element (~1e-3 mean).
    assert (w.grad - wt.grad).abs().mean() <= 1e-4 * wt.grad.abs().mean()


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 301), (3, 5, 129), (11, 63), (5, 3, 37)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_rows_wider_than_a_block(small_blocks, shape, dtype, mode, offset, with_weight):
    """Rows in column blocks: dW summed per block in registers (up to 4 blocks), or looped and added
    block by block into the partials."""
    run_parity(shape, dtype, mode, offset, with_weight=with_weight)


def test_non_contiguous_input_and_gradient():
    base = randn(45, 7, 3, requires_grad=True)
    x = base.permute(2, 1, 0)  # [3, 7, 45], columns strided
    w = randn(45, requires_grad=True)
    dy = randn(45, 7, 3).permute(2, 1, 0)
    y = LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", True, None, True)  # reuse allowed, dY not dense
    y.backward(dy)
    b64, w64 = as64(base, w)
    rms_norm_reference(b64.permute(2, 1, 0), w64, EPS).backward(dy.double())
    assert_matches("out", y, rms_norm_reference(*as64(x, w), EPS).detach())
    assert_matches("dX", base.grad, b64.grad)
    assert_matches("dW", w.grad, w64.grad)


def test_row_slices_of_a_wider_tensor():
    """Rows with a stride larger than H (a slice of the last dim) are read in place."""
    wide = randn(5, 50, requires_grad=True)
    w = randn(37, requires_grad=True)
    y = LigerRMSNormFunction.apply(wide[:, :37], w, EPS)
    y.sum().backward()
    wide64, w64 = as64(wide, w)
    rms_norm_reference(wide64[:, :37], w64, EPS).sum().backward()
    assert_matches("dX", wide.grad, wide64.grad)
    assert_matches("dW", w.grad, w64.grad)


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
def test_empty_input(shape):
    x = randn(*shape, requires_grad=True)
    w = randn(16, requires_grad=True)
    y = LigerRMSNormFunction.apply(x, w, EPS)
    y.sum().backward()
    assert y.shape == shape and x.grad.shape == shape
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_inputs_name_the_argument():
    x = randn(4, 8)
    with pytest.raises(ValueError, match="`W` has shape"):
        LigerRMSNormFunction.apply(x, randn(9), EPS)
    with pytest.raises(TypeError, match="`W` is torch.float16"):
        LigerRMSNormFunction.apply(x.bfloat16(), randn(8, dtype=torch.float16), EPS)
    with pytest.raises(TypeError, match="`W` is torch.bfloat16"):
        LigerRMSNormFunction.apply(x, randn(8, dtype=torch.bfloat16), EPS)  # fp32 X, half W
    with pytest.raises(TypeError, match="`X`"):
        LigerRMSNormFunction.apply(x.long(), randn(8), EPS)
    with pytest.raises(ValueError, match="`W` is on meta"):
        LigerRMSNormFunction.apply(x, torch.empty(8, device="meta"), EPS)
    with pytest.raises(ValueError, match="casting_mode"):
        LigerRMSNormFunction.apply(x, randn(8), EPS, 0.0, "mistral")
    with pytest.raises(ValueError, match="widest supported"):
        LigerRMSNormFunction.apply(torch.empty(1, norms.MAX_HIDDEN + 1, device=DEVICE), None, EPS)


@pytest.mark.parametrize("row_mode", [None, False, True])
def test_row_mode_is_only_a_hint(row_mode):
    x, w = randn(3, 37), randn(37)
    y = LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", True, row_mode)
    assert_matches("out", y, rms_norm_reference(*as64(x, w), EPS).detach())


def test_torch_impl_switch(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    run_parity((3, 37), torch.bfloat16, "gemma", 1.0)
    x, w = randn(3, 37, requires_grad=True), randn(37)
    y = liger_rms_norm(x, w, EPS)
    assert_matches("functional", y, rms_norm_reference(*as64(x, w), EPS).detach())


def test_float64_runs_the_reference():
    x, w = randn(3, 37).double().requires_grad_(), randn(37).double().requires_grad_()
    y = LigerRMSNormFunction.apply(x, w, EPS, 1.0, "gemma")
    y.sum().backward()
    torch.testing.assert_close(y, rms_norm_reference(x.detach(), w.detach(), EPS, 1.0, "gemma"), rtol=0, atol=0)
    assert x.grad.dtype == torch.float64


def _hf_pairs():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return [
        (lambda h: LlamaRMSNorm(h, eps=EPS), lambda h: LigerRMSNorm(h, eps=EPS), "llama", 0.0),
        (
            lambda h: GemmaRMSNorm(h, eps=EPS),
            lambda h: LigerRMSNorm(h, eps=EPS, offset=1.0, casting_mode="gemma", init_fn="zeros"),
            "gemma",
            1.0,
        ),
    ]


@pytest.mark.parametrize("pair", [0, 1], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_module_matches_hugging_face(pair, dtype):
    hf_cls, liger_cls, mode, offset = _hf_pairs()[pair]
    shape = (2, 1024, 2048) if ON_GPU else (2, 9, 37)
    hf, ours = hf_cls(shape[-1]).to(DEVICE), liger_cls(shape[-1]).to(DEVICE)
    assert torch.equal(hf.weight, ours.weight), "init_fn must give HF's initial weight"
    with torch.no_grad():
        hf.weight.normal_(0, 0.3 if pair else 1.0)
        ours.weight.copy_(hf.weight)
    hf, ours = hf.to(dtype), ours.to(dtype)
    x = randn(*shape, dtype=dtype, requires_grad=True)
    dy = randn(*shape, dtype=dtype)
    xt = x.detach().clone().requires_grad_()
    y_hf = hf(xt)
    y_hf.backward(dy)
    # The reference reproduces HF bit for bit in the same dtype...
    torch.testing.assert_close(rms_norm_reference(xt, hf.weight, EPS, offset, mode), y_hf, rtol=0, atol=0)
    # ... and in float64 it is the yardstick for both.
    x64, w64 = as64(x, hf.weight)
    y64 = rms_norm_reference(x64, w64, EPS, offset, mode)
    y64.backward(dy.double())
    y = ours(x)
    y.backward(dy.clone())
    assert_matches("out", y, y64, y_hf)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    assert_matches("dW", ours.weight.grad, w64.grad, hf.weight.grad)


def test_module_options():
    m = LigerRMSNorm(8, eps=1e-5, elementwise_affine=False).to(DEVICE)
    assert m.weight is None and m.variance_epsilon == 1e-5
    x = randn(3, 8)
    assert_matches("no affine", m(x), rms_norm_reference(*as64(x), None, 1e-5).detach())
    assert torch.equal(LigerRMSNorm(8, init_fn="zeros").weight, torch.zeros(8))
    with pytest.raises(ValueError, match="init_fn"):
        LigerRMSNorm(8, init_fn="randn")


# ----------------------------------------------------------------------------- in_place safety


def _grads_match_reference(inputs, loss_of, reference_loss_of):
    """Gradients of ``loss_of(*inputs)`` against the float64 reference of the same expression."""
    ins64 = as64(*inputs)
    reference_loss_of(*ins64).backward()
    loss_of(*inputs).backward()
    for i, (t, t64) in enumerate(zip(inputs, ins64)):
        assert_matches(f"grad {i}", t.grad, t64.grad)


def test_default_in_place_is_safe_when_the_output_joins_a_residual():
    """``x + norm(x)``: the gradient of the sum reaches x and the norm's output through one buffer;
    writing dX into it corrupted x's gradient (max error 15 on this case with Liger's default)."""
    norm = LigerRMSNorm(64).to(DEVICE)
    x, dy = randn(8, 64, requires_grad=True), randn(8, 64)
    _grads_match_reference(
        [x],
        lambda x: ((x + norm(x)) * dy).sum(),
        lambda x: ((x + rms_norm_reference(x, norm.weight.double(), 1e-6)) * dy.double()).sum(),
    )


def test_default_in_place_is_safe_for_a_sum_of_two_norms():
    a, b, w = randn(5, 37, requires_grad=True), randn(5, 37, requires_grad=True), randn(37)
    dy = randn(5, 37)
    _grads_match_reference(
        [a, b],
        lambda a, b: ((liger_rms_norm(a, w, EPS) + LigerRMSNormFunction.apply(b, w, EPS)) * dy).sum(),
        lambda a, b: ((rms_norm_reference(a, w.double(), EPS) + rms_norm_reference(b, w.double(), EPS)) * dy).sum(),
    )


@pytest.mark.parametrize("entry", ["module", "function", "functional"])
def test_default_in_place_leaves_the_callers_gradient_intact(entry):
    x, w = randn(7, 45, requires_grad=True), randn(45)
    norm = LigerRMSNorm(45).to(DEVICE)
    call = {
        "module": lambda: norm(x),
        "function": lambda: LigerRMSNormFunction.apply(x, w, EPS),
        "functional": lambda: liger_rms_norm(x, w, EPS, in_place=True),
    }[entry]
    g = randn(7, 45)
    g_before = g.clone()
    call().backward(g)
    assert torch.equal(g, g_before), "the backward overwrote the caller's gradient"


@pytest.mark.parametrize("in_place", [True, False])
def test_gradient_buffer_reused_only_on_request(in_place):
    """``grad_output_unshared=True`` (the caller's word that nothing else reads the output's
    gradient) lets ``in_place=True`` write dX into it; ``in_place=False`` never does."""
    x, w, dy = randn(9, 37, requires_grad=True), randn(37), randn(9, 37)
    buf = dy.clone()
    LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", in_place, None, True).backward(buf)
    x64, w64 = as64(x, w)
    rms_norm_reference(x64, w64, EPS).backward(dy.double())
    assert_matches("dX", x.grad, x64.grad)
    assert torch.equal(buf, x.grad) == in_place


def test_patched_pre_norms_reuse_the_gradient_buffer():
    """The patch table opts pre-norm call sites (Llama's) into buffer reuse, keeping Liger's
    memory there; Gemma 2's post-norms (``residual + norm(x)``) stay out."""
    pytest.importorskip("transformers")
    from liger_kernel.transformers import monkey_patch as mp
    from liger_kernel.transformers.model_specs import MODEL_SPECS

    try:
        mp.apply_liger_kernel_to_llama(rope=False, fused_linear_cross_entropy=False, swiglu=False)
        mp.apply_liger_kernel_to_gemma2(rope=False, fused_linear_cross_entropy=False, geglu=False)
        from transformers.models.gemma2 import modeling_gemma2
        from transformers.models.llama import modeling_llama

        llama_norm = modeling_llama.LlamaRMSNorm(37, eps=EPS).to(DEVICE)
        gemma2_norm = modeling_gemma2.Gemma2RMSNorm(37, eps=EPS).to(DEVICE)
    finally:
        mp.revert_liger_kernel_to_llama()
        mp.revert_liger_kernel_to_gemma2()
    assert MODEL_SPECS["llama"].norm.in_place and llama_norm.grad_output_unshared and llama_norm.in_place
    assert not gemma2_norm.grad_output_unshared
    for norm, reused in ((llama_norm, True), (gemma2_norm, False)):
        x, dy = randn(9, 37, requires_grad=True), randn(9, 37)
        buf = dy.clone()
        norm(x).backward(buf)
        assert torch.equal(buf, x.grad) == reused


# ----------------------------------------------------------------------------- per-family classes


def _family_pairs():
    """(Liger class, HF class or None, Liger's defaults: eps, offset, casting_mode, init_fn, in_place)."""
    import liger_kernel.transformers.rms_norm as rn

    return {
        "Gemma": (rn.LigerRMSNormForGemma, ("gemma", "GemmaRMSNorm"), 1.0, "gemma", "zeros", True),
        "Gemma2": (rn.LigerRMSNormForGemma2, ("gemma2", "Gemma2RMSNorm"), 1.0, "gemma", "zeros", False),
        "Gemma3": (rn.LigerRMSNormForGemma3, ("gemma3", "Gemma3RMSNorm"), 1.0, "gemma", "zeros", False),
        "Gemma4": (rn.LigerRMSNormForGemma4, ("gemma4", "Gemma4RMSNorm"), 0.0, "gemma", "ones", False),
        "Glm4": (rn.LigerRMSNormForGlm4, ("glm4", "Glm4RMSNorm"), 0.0, "llama", "ones", False),
        "Olmo2": (rn.LigerRMSNormForOlmo2, ("olmo2", "Olmo2RMSNorm"), 0.0, "llama", "ones", False),
        "Qwen3Next": (rn.LigerRMSNormForQwen3Next, ("qwen3_next", "Qwen3NextRMSNorm"), 1.0, "gemma", "zeros", False),
        "MuseGlimmer": (
            rn.LigerRMSNormForMuseGlimmer,
            ("muse_glimmer", "MuseGlimmerRMSNorm"),
            0.0,
            "gemma",
            "ones",
            False,
        ),
        "MuseGlimmerTextCentered": (
            rn.LigerRMSNormForMuseGlimmerTextCentered,
            ("muse_glimmer", "MuseGlimmerTextCenteredRMSNorm"),
            1.0,
            "gemma",
            "zeros",
            False,
        ),
    }


FAMILIES = "Gemma Gemma2 Gemma3 Gemma4 Glm4 Olmo2 Qwen3Next MuseGlimmer MuseGlimmerTextCentered".split()


def _hf_class(module_name, class_name):
    module = pytest.importorskip(f"transformers.models.{module_name}.modeling_{module_name}")
    return getattr(module, class_name)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_class_defaults(family):
    cls, _, offset, mode, init_fn, in_place = _family_pairs()[family]
    import liger_kernel.transformers as lk

    assert getattr(lk, cls.__name__) is cls and issubclass(cls, LigerRMSNorm) and cls.forward is LigerRMSNorm.forward
    m = cls(8)
    assert (m.offset, m.casting_mode, m.in_place, m.variance_epsilon) == (offset, mode, in_place, 1e-6)
    assert torch.equal(m.weight, (torch.zeros if init_fn == "zeros" else torch.ones)(8))
    assert not m.grad_output_unshared


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_family_class_matches_hugging_face(family, dtype):
    """Output and gradients against float64, with Hugging Face's own class in ``dtype`` as the
    yardstick (OLMo 2's Liger default, "llama", rounds once more than HF does in half precision)."""
    cls, (module_name, class_name), offset, mode, _, _ = _family_pairs()[family]
    hf_cls = _hf_class(module_name, class_name)
    shape = (2, 256, 1024) if ON_GPU else (2, 5, 37)
    hf, ours = hf_cls(shape[-1], 1e-5).to(DEVICE), cls(shape[-1], 1e-5).to(DEVICE)
    assert torch.equal(hf.weight, ours.weight), "the initial weight must be Hugging Face's"
    with torch.no_grad():
        hf.weight.normal_(0, 0.3 if offset else 1.0)
        ours.weight.copy_(hf.weight)
    hf, ours = hf.to(dtype), ours.to(dtype)
    x, dy = randn(*shape, dtype=dtype, requires_grad=True), randn(*shape, dtype=dtype)
    xt = x.detach().clone().requires_grad_()
    y_hf = hf(xt)
    y_hf.backward(dy)
    x64, w64 = as64(x, hf.weight)
    y64 = rms_norm_reference(x64, w64, 1e-5, offset, mode)
    y64.backward(dy.double())
    y = ours(x)
    y.backward(dy)
    assert y.dtype == dtype
    assert_matches("out", y, y64, y_hf)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    assert_matches("dW", ours.weight.grad, w64.grad, hf.weight.grad)


@pytest.mark.parametrize("family", ["Gemma4", "MuseGlimmer"])
def test_family_class_without_scale(family):
    cls, (module_name, class_name), *_ = _family_pairs()[family]
    hf = _hf_class(module_name, class_name)(37, 1e-6, with_scale=False)
    ours = cls(37, with_scale=False)
    assert ours.weight is None and ours.with_scale is False
    x = randn(3, 37)
    assert_matches("out", ours(x), rms_norm_reference(*as64(x), None, 1e-6).detach(), hf.to(DEVICE)(x))
    if family == "MuseGlimmer":
        assert cls(with_scale=False).weight is None  # `dim` may be left out without a weight
        with pytest.raises(ValueError, match="hidden_size"):
            cls()


# ----------------------------------------------------------------------------- ops-level functions


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("with_weight", [True, False])
def test_forward_and_backward_functions_chain(mode, offset, with_weight):
    """``rms_norm_forward`` returns what ``rms_norm_backward`` takes, in its order."""
    from liger_kernel.ops.rms_norm import rms_norm_backward, rms_norm_forward

    x = randn(3, 5, 37, dtype=torch.bfloat16)
    w = randn(37, dtype=torch.bfloat16) if with_weight else None
    dy = randn(3, 5, 37, dtype=torch.bfloat16)
    Y, X, RSTD, BLOCK_SIZE, num_warps, casting_mode = rms_norm_forward(x, w, EPS, offset, mode, None)
    assert X.shape == (15, 37) and RSTD.shape == (15,) and RSTD.dtype == torch.float32
    dy_buf = dy.clone()
    dX, dW = rms_norm_backward(dy_buf, X, w, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, False, None)
    x64, w64 = as64(x.requires_grad_(), w.requires_grad_() if with_weight else None)
    y64 = rms_norm_reference(x64, w64, EPS, offset, mode)
    y64.backward(dy.double())
    assert_matches("out", Y, y64.detach())
    assert_matches("dX", dX, x64.grad)
    assert torch.equal(dy_buf, dy)
    if with_weight:
        assert_matches("dW", dW, w64.grad)
        _, no_dw = rms_norm_backward(dy, X, w, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, False, None, False)
        assert no_dw is None
    else:
        assert dW is None
    rms_norm_backward(dy_buf, X, w, RSTD, offset, casting_mode, BLOCK_SIZE, num_warps, True, None)
    assert torch.equal(dy_buf.view(-1, 37), dX.view(-1, 37)), "in_place=True writes dX into dY here"
    with pytest.raises(ValueError, match="`RSTD`"):
        rms_norm_backward(dy, X, w, RSTD[:3], offset, casting_mode, BLOCK_SIZE, num_warps, False, None)


def test_strided_weight():
    """A weight that is a strided view (every other element of a buffer) was read as if
    contiguous: a silently wrong output (max error 4.5 on this case)."""
    buf = randn(74, requires_grad=True)
    x, dy = randn(3, 37, requires_grad=True), randn(3, 37)
    y = LigerRMSNormFunction.apply(x, buf[::2], EPS)
    y.backward(dy)
    x64, buf64 = as64(x, buf)
    y64 = rms_norm_reference(x64, buf64[::2], EPS)
    y64.backward(dy.double())
    assert_matches("out", y, y64.detach())
    assert_matches("dX", x.grad, x64.grad)
    assert_matches("dW", buf.grad, buf64.grad)
