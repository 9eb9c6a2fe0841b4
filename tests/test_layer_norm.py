import pytest
import torch
from parity import DEVICE, DTYPES, ON_GPU, as64, assert_matches, randn, sizes

import liger_kernel.ops.norms as norms
from liger_kernel.ops.layer_norm import LigerLayerNormFunction, layer_norm_reference
from liger_kernel.transformers import LigerLayerNorm
from liger_kernel.transformers.functional import liger_layer_norm

SHAPES = sizes(
    # odd rows narrower than a block, several rows per program and two tiles, just past 2048
    cpu=[(3, 5, 37), (67, 45), (7, 2049)],
    # Llama-8B / 70B widths, rows in four column blocks in the backward (16384; 12000: the last
    # one masked), rows of 65536 looped both ways
    gpu=[(16384, 4096), (8192, 8192), (4096, 16384), (1000, 12000), (2, 65536), (3, 333, 5000)],
)
EPS = 1e-5
# Which of (W, B) exist: the usual affine LayerNorm, LayerNorm without bias, no affine at all.
AFFINE = {"weight_bias": (True, True), "weight_only": (True, False), "none": (False, False)}


def run_parity(shape, dtype, affine="weight_bias", param_dtype=None, mean=0.0, x_view=None):
    hidden = shape[-1]
    has_w, has_b = AFFINE[affine]
    # A mean far from zero tests the variance against cancellation.
    x = (randn(*shape, dtype=torch.float32) + mean).to(dtype).requires_grad_()
    w_dtype, b_dtype = param_dtype if isinstance(param_dtype, tuple) else (param_dtype, param_dtype)
    w = randn(hidden, dtype=w_dtype or dtype, requires_grad=True) if has_w else None
    b = randn(hidden, dtype=b_dtype or dtype, requires_grad=True) if has_b else None
    dy = randn(*shape, dtype=dtype)
    x64, w64, b64 = as64(x, w, b)
    layer_norm_reference(x64, w64, b64, EPS).backward(dy.double())
    y64 = layer_norm_reference(*as64(x, w, b), EPS).detach()
    xt, wt, bt = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b)]
    yt = layer_norm_reference(xt, wt, bt, EPS)
    yt.backward(dy)

    x_in = x.clone() if x_view is None else x_view(x)
    y = LigerLayerNormFunction.apply(x_in, w, b, EPS)
    dy_buf = dy.clone()
    y.backward(dy_buf)
    assert y.dtype == dtype
    assert torch.equal(dy_buf, dy), "LayerNorm must not overwrite the incoming gradient"
    assert_matches("out", y, y64, yt)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    for name, t, t64, tt in (("dW", w, w64, wt), ("dB", b, b64, bt)):
        if t is not None:
            assert t.grad.dtype == t.dtype
            assert_matches(name, t.grad, t64.grad, tt.grad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(shape, dtype):
    run_parity(shape, dtype)


@pytest.mark.parametrize("affine", ["weight_only", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_without_bias_or_weight(affine, dtype):
    run_parity(SHAPES[0], dtype, affine)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_parameters_with_half_input(dtype):
    run_parity(SHAPES[-1], dtype, param_dtype=torch.float32)


@pytest.mark.parametrize("param_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_weight_and_bias_in_different_dtypes(param_dtype):
    """dW and dB are summed together and cast apart, each to its own parameter's dtype."""
    run_parity(SHAPES[-1], torch.bfloat16, param_dtype=param_dtype)


@pytest.mark.parametrize("frozen", ["W", "B"])
def test_gradient_of_one_parameter_only(frozen):
    """A frozen weight or bias gets no gradient; the other one still the right one."""
    x = randn(13, 37, requires_grad=True)
    w, b = randn(37, requires_grad=frozen != "W"), randn(37, requires_grad=frozen != "B")
    dy = randn(13, 37)
    LigerLayerNormFunction.apply(x, w, b, EPS).backward(dy)
    x64, w64, b64 = as64(x, w, b)
    layer_norm_reference(x64, w64, b64, EPS).backward(dy.double())
    assert_matches("dX", x.grad, x64.grad)
    frozen_t, trained, trained64 = (w, b, b64) if frozen == "W" else (b, w, w64)
    assert frozen_t.grad is None
    assert_matches("d" + ("B" if frozen == "W" else "W"), trained.grad, trained64.grad)


def test_large_mean_is_stable():
    run_parity(SHAPES[1], torch.float32, mean=300.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 301), (3, 5, 129), (11, 63), (5, 3, 37)])
@pytest.mark.parametrize("affine", list(AFFINE))
def test_rows_wider_than_a_block(small_blocks, shape, dtype, affine):
    """Rows in column blocks: block statistics merged; dW / dB summed per block in registers (up to
    4 blocks), or looped and added block by block into the partials."""
    run_parity(shape, dtype, affine)


def test_rows_wider_than_a_block_large_mean(small_blocks):
    run_parity((13, 301), torch.float32, mean=300.0)


def test_non_contiguous_input_and_gradient():
    base = randn(45, 7, 3, requires_grad=True)
    w, b = randn(45, requires_grad=True), randn(45, requires_grad=True)
    dy = randn(45, 7, 3).permute(2, 1, 0)
    y = LigerLayerNormFunction.apply(base.permute(2, 1, 0), w, b, EPS)
    y.backward(dy)
    b64, w64, bias64 = as64(base, w, b)
    layer_norm_reference(b64.permute(2, 1, 0), w64, bias64, EPS).backward(dy.double())
    assert_matches("out", y, layer_norm_reference(*as64(base.permute(2, 1, 0), w, b), EPS).detach())
    assert_matches("dX", base.grad, b64.grad)
    assert_matches("dW", w.grad, w64.grad)
    assert_matches("dB", b.grad, bias64.grad)


def test_row_slices_of_a_wider_tensor():
    run_parity((5, 37), torch.float32, x_view=lambda t: torch.cat([t, t[:, :13]], dim=1)[:, :37])


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
def test_empty_input(shape):
    x = randn(*shape, requires_grad=True)
    w, b = randn(16, requires_grad=True), randn(16, requires_grad=True)
    y = LigerLayerNormFunction.apply(x, w, b, EPS)
    y.sum().backward()
    assert y.shape == shape and x.grad.shape == shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_bad_inputs_name_the_argument():
    x, w = randn(4, 8), randn(8)
    with pytest.raises(ValueError, match="`B` has shape"):
        LigerLayerNormFunction.apply(x, w, randn(7), EPS)
    with pytest.raises(ValueError, match="`W` has shape"):
        LigerLayerNormFunction.apply(x, randn(2, 4), None, EPS)
    with pytest.raises(TypeError, match="`B` is torch.float16"):
        LigerLayerNormFunction.apply(x.bfloat16(), w.bfloat16(), randn(8, dtype=torch.float16), EPS)
    with pytest.raises(ValueError, match="`B` is on meta"):
        LigerLayerNormFunction.apply(x, w, torch.empty(8, device="meta"), EPS)
    with pytest.raises(ValueError, match="widest supported"):
        LigerLayerNormFunction.apply(torch.empty(1, norms.MAX_HIDDEN + 1, device=DEVICE), None, None, EPS)


def test_torch_impl_switch(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    run_parity((3, 37), torch.bfloat16)
    x, w, b = randn(3, 37), randn(37), randn(37)
    assert_matches("functional", liger_layer_norm(x, w, b, EPS), layer_norm_reference(*as64(x, w, b), EPS).detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_matches_torch_layer_norm(dtype):
    shape = (2, 1024, 2048) if ON_GPU else (2, 9, 37)
    ref = torch.nn.LayerNorm(shape[-1], eps=EPS).to(DEVICE)
    ours = LigerLayerNorm(shape[-1], eps=EPS).to(DEVICE)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())  # same parameter names
    ref, ours = ref.to(dtype), ours.to(dtype)
    x = randn(*shape, dtype=dtype, requires_grad=True)
    dy = randn(*shape, dtype=dtype)
    xt = x.detach().clone().requires_grad_()
    y_ref = ref(xt)
    y_ref.backward(dy)
    x64, w64, b64 = as64(x, ref.weight, ref.bias)
    torch.nn.functional.layer_norm(x64, shape[-1:], w64, b64, EPS).backward(dy.double())
    y = ours(x)
    y.backward(dy)
    assert_matches("out", y, layer_norm_reference(*as64(x, ref.weight, ref.bias), EPS).detach(), y_ref)
    assert_matches("dX", x.grad, x64.grad, xt.grad)
    assert_matches("dW", ours.weight.grad, w64.grad, ref.weight.grad)
    assert_matches("dB", ours.bias.grad, b64.grad, ref.bias.grad)


def test_module_options():
    m = LigerLayerNorm(8, eps=1e-5, init_fn="zeros")
    assert torch.equal(m.weight, torch.zeros(8)) and torch.equal(m.bias, torch.zeros(8))
    assert m.variance_epsilon == m.eps == 1e-5
    with pytest.raises(ValueError, match="init_fn"):
        LigerLayerNorm(8, init_fn="randn")


def test_module_impl_mode_backend():
    m = LigerLayerNorm(37, impl="torch")
    assert (m.impl, m.mode, m.variance_epsilon) == ("torch", None, 1e-6)
    assert LigerLayerNorm(8, backend="triton").impl == "triton" and LigerLayerNorm(8).impl is None
    x = randn(3, 37, requires_grad=True)
    y = m.to(DEVICE)(x)
    assert y.grad_fn is not None and "LigerLayerNorm" not in type(y.grad_fn).__name__  # the reference
    assert_matches("impl=torch", y, layer_norm_reference(*as64(x, m.weight, m.bias), 1e-6).detach())
    with pytest.raises(ValueError, match="`impl` must be None or one of"):
        LigerLayerNorm(8, impl="cutile")
    with pytest.raises(ValueError, match="`mode` must be None"):
        LigerLayerNorm(8, mode="fast")
    with pytest.raises(ValueError, match="disagree"):
        LigerLayerNorm(8, impl="torch", backend="triton")


@pytest.mark.parametrize("affine", list(AFFINE))
def test_forward_and_backward_functions_chain(affine):
    """``layer_norm_forward`` returns what ``layer_norm_backward`` takes (X, Mean, RSTD)."""
    from liger_kernel.ops.layer_norm import layer_norm_backward, layer_norm_forward

    has_w, has_b = AFFINE[affine]
    x = randn(3, 5, 37)
    w, b = randn(37) if has_w else None, randn(37) if has_b else None
    dy = randn(3, 5, 37)
    Y, X, Mean, RSTD, BLOCK_SIZE, num_warps = layer_norm_forward(x, w, b, EPS)
    assert X.shape == (15, 37) and Mean.shape == RSTD.shape == (15,) and isinstance(BLOCK_SIZE + num_warps, int)
    dX, dW, dB = layer_norm_backward(dy, X, w, b, Mean, RSTD)
    x64, w64, b64 = as64(x.requires_grad_(), *(t.requires_grad_() if t is not None else None for t in (w, b)))
    y64 = layer_norm_reference(x64, w64, b64, EPS)
    y64.backward(dy.double())
    assert_matches("out", Y, y64.detach())
    assert_matches("dX", dX, x64.grad)
    for name, got, ref in (("dW", dW, w64), ("dB", dB, b64)):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert_matches(name, got, ref.grad)
    # separate mean / rstd tensors (not the forward's one buffer) are gathered first
    dX2, _, _ = layer_norm_backward(dy, X, w, b, Mean.clone(), RSTD.clone(), needs_dw=False, needs_db=False)
    assert torch.equal(dX2, dX)


def test_strided_weight_and_bias():
    """Strided parameter views (the columns of a [H, 2] buffer) were read as if contiguous: a
    silently wrong output (max error 5.9 on a case like this one)."""
    buf = randn(37, 2, requires_grad=True)
    x, dy = randn(3, 37, requires_grad=True), randn(3, 37)
    y = LigerLayerNormFunction.apply(x, buf[:, 0], buf[:, 1], EPS)
    y.backward(dy)
    x64, buf64 = as64(x, buf)
    y64 = layer_norm_reference(x64, buf64[:, 0], buf64[:, 1], EPS)
    y64.backward(dy.double())
    assert_matches("out", y, y64.detach())
    assert_matches("dX", x.grad, x64.grad)
    assert_matches("dW and dB", buf.grad, buf64.grad)
