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


def run_parity(shape, dtype, mode, offset, with_weight=True, w_dtype=None, in_place=False):
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

    y = LigerRMSNormFunction.apply(x.clone(), w, EPS, offset, mode, in_place)
    dy_buf = dy.clone()
    y.backward(dy_buf)
    assert y.dtype == dtype
    assert_matches("out", y, y64, yt)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    if w is not None:
        assert w.grad.dtype == w.dtype
        assert_matches("dW", w.grad, w64.grad, wt.grad)
    return dy, dy_buf, x.grad


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


@pytest.mark.parametrize("in_place", [True, False])
def test_in_place_backward_reuses_the_gradient_buffer(in_place):
    dy, dy_buf, dx = run_parity(SHAPES[1], torch.bfloat16, "llama", 0.0, in_place=in_place)
    if in_place:
        assert torch.equal(dy_buf, dx), "dX was not written into dY's buffer"
    else:
        assert torch.equal(dy_buf, dy), "dY was overwritten without in_place"


def test_non_contiguous_input_and_gradient():
    base = randn(45, 7, 3, requires_grad=True)
    x = base.permute(2, 1, 0)  # [3, 7, 45], columns strided
    w = randn(45, requires_grad=True)
    dy = randn(45, 7, 3).permute(2, 1, 0)
    y = LigerRMSNormFunction.apply(x, w, EPS)  # in_place on, but dY isn't dense: must not be used
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
