import pytest
import torch
from parity import DEVICE, DTYPES, as64, assert_matches, randn, sizes

from liger_kernel.ops.geglu import LigerGELUMulFunction, geglu_reference
from liger_kernel.ops.swiglu import LigerSiLUMulFunction, swiglu_reference
from liger_kernel.transformers import LigerGEGLUMLP, LigerPhi3SwiGLUMLP, LigerSwiGLUMLP
from liger_kernel.transformers.functional import liger_geglu, liger_swiglu

OPS = {
    "swiglu": (LigerSiLUMulFunction, swiglu_reference),
    "geglu": (LigerGELUMulFunction, geglu_reference),
}
SHAPES = sizes(
    cpu=[(3, 7, 37), (5, 2049), (1, 300)],  # odd; just past a block of 2048; one row
    gpu=[(2, 4096, 14336), (8192, 11008), (3, 333, 5000)],
)


def run_parity(op, shape, dtype, in_place):
    fn, reference = OPS[op]
    a, b = randn(*shape, dtype=dtype, requires_grad=True, scale=2.0), randn(*shape, dtype=dtype, requires_grad=True)
    dc = randn(*shape, dtype=dtype)
    a64, b64 = as64(a, b)
    c64 = reference(a64, b64)
    c64.backward(dc.double())
    # PyTorch in the same dtype: the yardstick for rounding error.
    at, bt = as64(a, b)
    at, bt = at.to(dtype).detach().requires_grad_(), bt.to(dtype).detach().requires_grad_()
    ct = reference(at, bt)
    ct.backward(dc)

    a_in, b_in = a.clone(), b.clone()  # non-leaf inputs, so an in-place backward can't hurt the test
    c = fn.apply(a_in, b_in, in_place)
    c.backward(dc)
    assert_matches(f"{op} out", c, c64, ct)
    assert_matches(f"{op} da", a.grad, a64.grad, at.grad)
    assert_matches(f"{op} db", b.grad, b64.grad, bt.grad)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(op, shape, dtype):
    run_parity(op, shape, dtype, in_place=False)


@pytest.mark.parametrize("op", OPS)
def test_in_place_backward(op):
    run_parity(op, SHAPES[0], torch.bfloat16, in_place=True)


@pytest.mark.parametrize("op", OPS)
def test_strided_halves_of_fused_projection(op):
    """Phi-3 splits one gate_up projection: both halves are strided views, handled without copies."""
    fn, reference = OPS[op]
    gate_up = randn(5, 9, 2 * 41, requires_grad=True)
    a, b = gate_up.chunk(2, dim=-1)
    c = fn.apply(a, b)
    dc = randn(41, 9, 5).permute(2, 1, 0)  # non-contiguous upstream gradient
    c.backward(dc)
    ref = as64(gate_up)[0]
    ra, rb = ref.chunk(2, dim=-1)
    reference(ra, rb).backward(dc.double())
    assert_matches("out", c, reference(*as64(a, b)).detach())
    assert_matches("grad", gate_up.grad, ref.grad)


@pytest.mark.parametrize("op", OPS)
def test_empty_input(op):
    fn, _ = OPS[op]
    a = randn(0, 16, requires_grad=True)
    c = fn.apply(a, randn(0, 16))
    c.sum().backward()
    assert c.shape == (0, 16) and a.grad.shape == (0, 16)


def test_bad_inputs_name_the_argument():
    a = randn(4, 8)
    with pytest.raises(TypeError, match="`b`.*bfloat16"):
        LigerSiLUMulFunction.apply(a, randn(4, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="`b` has shape"):
        LigerSiLUMulFunction.apply(a, randn(4, 9))
    with pytest.raises(TypeError, match="`a`"):
        LigerSiLUMulFunction.apply(a.long(), a)


def test_torch_impl_switch(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    a, b = randn(3, 5, requires_grad=True), randn(3, 5, requires_grad=True)
    c = liger_swiglu(a, b)
    c.sum().backward()
    a64, b64 = as64(a, b)
    swiglu_reference(a64, b64).sum().backward()
    assert_matches("out", c, swiglu_reference(*as64(a, b)).detach())
    assert_matches("da", a.grad, a64.grad)
    assert_matches("db", b.grad, b64.grad)
    assert_matches("geglu", liger_geglu(a, b), geglu_reference(*as64(a, b)).detach())


class Config:
    hidden_size = 24
    intermediate_size = 40
    hidden_act = "silu"
    hidden_activation = "gelu_pytorch_tanh"


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("module_cls", [LigerSwiGLUMLP, LigerPhi3SwiGLUMLP, LigerGEGLUMLP])
def test_mlp_modules_match_eager(monkeypatch, module_cls, impl):
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    torch.manual_seed(0)
    mlp = module_cls(Config()).to(DEVICE)
    x = randn(2, 7, 24, requires_grad=True)
    y = mlp(x)
    y.backward(torch.ones_like(y))
    act = (
        torch.nn.functional.silu
        if module_cls is not LigerGEGLUMLP
        else (lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
    )
    x2 = x.detach().clone().requires_grad_()
    if module_cls is LigerPhi3SwiGLUMLP:
        g, u = mlp.gate_up_proj(x2).chunk(2, dim=-1)
    else:
        g, u = mlp.gate_proj(x2), mlp.up_proj(x2)
    y2 = mlp.down_proj(act(g) * u)
    y2.backward(torch.ones_like(y2))
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_swiglu_mlp_rejects_other_activation():
    cfg = Config()
    cfg.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act"):
        LigerSwiGLUMLP(cfg)
