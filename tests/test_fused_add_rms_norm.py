import pytest
import torch
from parity import DTYPES, as64, assert_matches, randn, sizes

from liger_kernel.ops.fused_add_rms_norm import (
    LigerFusedAddRMSNormFunction,
    fused_add_rms_norm_backward,
    fused_add_rms_norm_forward,
    fused_add_rms_norm_reference,
)
from liger_kernel.transformers import LigerFusedAddRMSNorm, LigerRMSNorm
from liger_kernel.transformers.functional import liger_fused_add_rms_norm

MODES = [("llama", 0.0), ("gemma", 1.0), ("none", 0.0)]
SHAPES = sizes(
    # odd rows narrower than a block, several rows per program, just past 2048
    cpu=[(3, 5, 37), (7, 2049)],
    # Llama-8B and 70B widths, a row in column parts (12000), one looped both ways (65536)
    gpu=[(16384, 4096), (8192, 8192), (1000, 12000), (2, 65536), (3, 333, 5000)],
)
EPS = 1e-6


def run_parity(shape, dtype, mode, offset, with_ds=True, apply=None):
    hidden = shape[-1]
    x = randn(*shape, dtype=dtype, requires_grad=True)
    r = randn(*shape, dtype=dtype, requires_grad=True)
    w = randn(hidden, dtype=dtype, requires_grad=True, scale=0.5)
    if offset == 0.0:
        w = (w.detach() + 1.0).requires_grad_()
    dy, ds = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype) if with_ds else None

    def grads(fn, inputs):
        y, s = fn(*inputs, EPS, offset, mode)
        outputs, upstream = ((y, s), (dy, ds)) if with_ds else ((y,), (dy,))
        upstream = [u.to(o.dtype) for u, o in zip(upstream, outputs)]
        return (y, s, *torch.autograd.grad(outputs, inputs, upstream))

    expected = grads(fused_add_rms_norm_reference, as64(x, r, w))
    baseline = grads(fused_add_rms_norm_reference, [t.detach().clone().requires_grad_() for t in (x, r, w)])
    got = grads(apply or LigerFusedAddRMSNormFunction.apply, [x, r, w])
    assert got[0].dtype == got[1].dtype == dtype
    for name, a, e, b in zip(("Y", "S", "dX", "dR", "dW"), got, expected, baseline):
        assert_matches(name, a, e, b)


@pytest.mark.parametrize("mode,offset", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(shape, dtype, mode, offset):
    run_parity(shape, dtype, mode, offset)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 301), (11, 63), (5, 3, 37)], ids=["looped", "parts", "parts-3d"])
def test_rows_wider_than_a_block(small_blocks, shape, dtype):
    """The forward's column loop (S written in pass 1, recomputed in pass 2) and both backward
    kernels for wide rows (the residual gradient added in each)."""
    run_parity(shape, dtype, "llama", 0.0)


def test_sum_output_unused():
    """Only the normed output feeds the loss: S's gradient is None in backward."""
    run_parity(SHAPES[0], torch.float32, "llama", 0.0, with_ds=False)


def test_functional():
    run_parity(SHAPES[0], torch.bfloat16, "gemma", 1.0, apply=liger_fused_add_rms_norm)


def test_module_matches_add_then_rms_norm_and_loads_its_state():
    """Same weights and numerics as ``residual + x`` then ``LigerRMSNorm``; the state_dicts are
    interchangeable. Against transformers' ``LlamaRMSNorm`` too where installed."""
    hidden = 37
    fused = LigerFusedAddRMSNorm(hidden, eps=1e-5)
    plain = LigerRMSNorm(hidden, eps=1e-5)
    plain.weight.data.normal_(1.0, 0.1)
    fused.load_state_dict(plain.state_dict())
    x, r = randn(3, 5, hidden, dtype=torch.bfloat16), randn(3, 5, hidden, dtype=torch.bfloat16)
    fused, plain = fused.to(x.device), plain.to(x.device)
    y, s = fused(x, r)
    torch.testing.assert_close(s, x + r, rtol=0, atol=0)
    torch.testing.assert_close(y, plain(x + r))
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    hf = llama.LlamaRMSNorm(hidden, eps=1e-5).to(x.device)
    hf.load_state_dict(fused.state_dict())
    torch.testing.assert_close(y.float(), hf(x + r).float(), atol=2e-2, rtol=1.6e-2)


def test_default_keeps_the_callers_gradients():
    """in_place without grad_output_unshared: the caller's dY and dS are not overwritten."""
    x, r = randn(7, 2049, requires_grad=True), randn(7, 2049, requires_grad=True)
    w = randn(2049, requires_grad=True)
    dy, ds = randn(7, 2049), randn(7, 2049)
    dy0, ds0 = dy.clone(), ds.clone()
    torch.autograd.backward(liger_fused_add_rms_norm(x, r, w, EPS, in_place=True), (dy, ds))
    assert torch.equal(dy, dy0) and torch.equal(ds, ds0)


def test_op_helpers_match_the_function():
    shape = SHAPES[0]
    x, r, w = randn(*shape), randn(*shape), randn(shape[-1]) + 1
    y, s, rstd, *_ = fused_add_rms_norm_forward(x, r, w, EPS, 0.0, "llama")
    y_ref, s_ref = fused_add_rms_norm_reference(x, r, w, EPS)
    torch.testing.assert_close((y, s), (y_ref, s_ref))
    dy, ds = randn(*shape), randn(*shape)
    dx, dw = fused_add_rms_norm_backward(dy, ds, s, w, rstd, 0.0, "llama", None, None, None, False)
    x64, r64, w64 = as64(x.requires_grad_(), r, w.requires_grad_())
    expected = torch.autograd.grad(
        fused_add_rms_norm_reference(x64, r64, w64, EPS), (x64, w64), (dy.double(), ds.double())
    )
    assert_matches("dX", dx, expected[0])
    assert_matches("dW", dw, expected[1])


def test_bad_residual_names_the_argument():
    x, w = randn(3, 8), randn(8)
    with pytest.raises(ValueError, match="`R`"):
        liger_fused_add_rms_norm(x, randn(3, 9), w, EPS)
    with pytest.raises(TypeError, match="`R`"):
        liger_fused_add_rms_norm(x, randn(3, 8, dtype=torch.bfloat16), w, EPS)


def test_pytorch_path(monkeypatch):
    """Where the kernels do not run (a CPU without the interpreter, ``LIGER_KERNEL_IMPL=torch``)."""
    import liger_kernel.ops.fused_add_rms_norm as op

    monkeypatch.setattr(op, "use_triton", lambda t: False)
    run_parity(SHAPES[0], torch.float32, "gemma", 1.0)
    run_parity(SHAPES[0], torch.float32, "llama", 0.0, with_ds=False)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_dispatcher_functional(impl):
    """``liger_kernel.functional.fused_add_rms_norm`` with a per-call implementation."""
    from liger_kernel.functional import fused_add_rms_norm

    x, r, w = randn(3, 37), randn(3, 37), randn(37) + 1
    torch.testing.assert_close(fused_add_rms_norm(x, r, w, impl=impl), fused_add_rms_norm_reference(x, r, w, EPS))


def test_leaf_gradients_are_separate_tensors():
    """X and R get one gradient; as leaves their ``.grad`` must not share storage (an in-place
    clip of one would change the other)."""
    x, r, w = randn(3, 8, requires_grad=True), randn(3, 8, requires_grad=True), randn(8)
    y, s = liger_fused_add_rms_norm(x, r, w, EPS)
    (y.sum() + s.sum()).backward()
    assert x.grad.data_ptr() != r.grad.data_ptr()
    torch.testing.assert_close(x.grad, r.grad)


def _backward_tiles(monkeypatch):
    """Record ``(BLOCK_ROWS, BLOCK_N, num_warps)`` of every launch of the whole-row backward kernel."""
    import liger_kernel.ops.norms as norms

    tiles, launch = [], norms.launch

    def spy(kernel, grid, tensors, scalars, num_warps):
        if kernel is norms._norm_backward_kernel:
            tiles.append((scalars[-3], scalars[-2], num_warps))
        return launch(kernel, grid, tensors, scalars, num_warps)

    monkeypatch.setattr(norms, "launch", spy)
    return tiles


def test_backward_tile_with_the_residual_gradient_fits_registers(monkeypatch):
    """At 4096 columns (Llama-3-8B) RMSNorm's backward tile is 4 rows over 16 warps, 32 elements a
    thread, which spills once dS is added too: here it is 2 rows, 16 a thread."""
    tiles = _backward_tiles(monkeypatch)
    run_parity((7, 2049), torch.float32, "llama", 0.0)
    assert tiles == [(2, 4096, 16)], tiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_tile_halved_several_times(monkeypatch, dtype):
    """A cap of 2 elements a thread halves a 16-row tile of 64 columns to 4 rows (and the
    persistent grid follows): exact as ever, on every output and gradient."""
    import liger_kernel.ops.fused_add_rms_norm as op

    monkeypatch.setattr(op, "RESIDUAL_TILE_PER_THREAD", 2)
    tiles = _backward_tiles(monkeypatch)
    run_parity((3, 5, 37), dtype, "gemma", 1.0)
    assert tiles == [(4, 64, 4)], tiles
