"""ReLU² (Nemotron's MLP activation): values and gradients against a float64 reference."""

import pytest
import torch
from parity import DEVICE, DTYPES, ON_GPU, as64, assert_matches, randn, sizes

from liger_kernel.ops.relu_squared import (
    LigerReLUSquaredFunction,
    relu_squared_backward,
    relu_squared_forward,
    relu_squared_reference,
)
from liger_kernel.transformers import LigerReLUSquared
from liger_kernel.transformers.functional import liger_relu_squared

SHAPES = sizes(
    cpu=[(3, 7, 37), (5, 2049), (1, 1)],  # odd; just past a block of 2048; one element
    gpu=[(4, 4096, 18432), (3, 333, 5000)],  # Nemotron-4's intermediate size
)
# Triton's CPU interpreter rounds fp32 to bf16 by truncation (GPUs round to nearest even), so
# bf16 is bit-exact on a GPU only; its parity above holds everywhere.
EXACT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
ENTRIES = {
    "function": LigerReLUSquaredFunction.apply,
    "module": LigerReLUSquared(),
    "functional": liger_relu_squared,
}


def check(fn, x, dy):
    x64 = as64(x)[0]
    relu_squared_reference(x64).backward(dy.double())
    xt = x.detach().clone().requires_grad_()  # PyTorch in the same dtype: the rounding yardstick
    yt = relu_squared_reference(xt)
    yt.backward(dy)
    y = fn(x)
    y.backward(dy)
    assert y.dtype == x.dtype
    assert_matches("y", y, relu_squared_reference(x64.detach()), yt)
    assert_matches("dx", x.grad, x64.grad, xt.grad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(shape, dtype):
    torch.manual_seed(0)
    check(
        LigerReLUSquaredFunction.apply,
        randn(*shape, dtype=dtype, requires_grad=True, scale=3.0),
        randn(*shape, dtype=dtype),
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_module_and_functional(entry):
    torch.manual_seed(1)
    check(ENTRIES[entry], randn(5, 41, requires_grad=True), randn(5, 41))


@pytest.mark.parametrize("dtype", EXACT_DTYPES)
def test_forward_is_exact(dtype):
    """relu(x)^2 of a representable x, computed in fp32 and rounded once: PyTorch's value bit for
    bit; zero and negatives (and -0.0) give 0, with a zero gradient."""
    torch.manual_seed(5)
    x = torch.cat([randn(1000, scale=4.0), torch.tensor([-3.0, -0.0, 0.0, 0.5, 3.0], device=DEVICE)]).to(dtype)
    assert torch.equal(relu_squared_forward(x), relu_squared_reference(x))
    dx = relu_squared_backward(x, torch.ones_like(x))
    assert torch.equal(dx[x <= 0], torch.zeros_like(dx[x <= 0]))


def test_strided_input_and_gradient():
    """A transposed input and a non-contiguous upstream gradient are read through their strides."""
    torch.manual_seed(2)
    base = randn(37, 9, requires_grad=True)
    x = base.t()
    dy = randn(37, 9).t()
    y = LigerReLUSquaredFunction.apply(x)
    y.backward(dy)
    ref = as64(base)[0]
    relu_squared_reference(ref.t()).backward(dy.double())
    assert_matches("y", y, relu_squared_reference(x.detach().double()))
    assert_matches("dx", base.grad, ref.grad)


def test_empty_input():
    x = randn(0, 7, requires_grad=True)
    y = LigerReLUSquaredFunction.apply(x)
    y.sum().backward()
    assert y.shape == (0, 7) and x.grad.shape == (0, 7)


def test_op_helpers_match_the_reference():
    torch.manual_seed(3)
    x, dy = randn(4, 19, dtype=torch.float64), randn(4, 19, dtype=torch.float64)
    torch.testing.assert_close(relu_squared_forward(x), relu_squared_reference(x))
    torch.testing.assert_close(relu_squared_backward(x, dy), 2 * x.clamp(min=0) * dy)


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="`X` must be a float32"):
        LigerReLUSquaredFunction.apply(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="`dY` has shape"):
        relu_squared_backward(torch.ones(3), torch.ones(4))


def test_torch_impl_runs_the_reference(monkeypatch):
    """LIGER_KERNEL_IMPL=torch: the reference computes, through the same Function."""
    import liger_kernel.ops.relu_squared as op

    monkeypatch.setattr(op, "use_triton", lambda t: False)
    torch.manual_seed(4)
    check(LigerReLUSquaredFunction.apply, randn(3, 11, requires_grad=True), randn(3, 11))
