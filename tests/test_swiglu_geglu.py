import pytest
import torch
from parity import DEVICE, DTYPES, as64, assert_matches, randn, sizes

from liger_kernel.ops.geglu import LigerGELUMulFunction, geglu_backward, geglu_forward, geglu_reference
from liger_kernel.ops.swiglu import (
    LigerGatedMLPFunction,
    LigerSiLUMulFunction,
    gated_backward,
    gated_mlp_reference,
    swiglu_backward,
    swiglu_forward,
    swiglu_fused_gate_up_backward,
    swiglu_fused_gate_up_forward,
    swiglu_fused_gate_up_reference,
    swiglu_reference,
)
from liger_kernel.transformers import LigerGEGLUMLP, LigerPhi3SwiGLUMLP, LigerSwiGLUMLP
from liger_kernel.transformers.functional import liger_geglu, liger_swiglu

OPS = {
    "swiglu": (LigerSiLUMulFunction, swiglu_reference),
    "geglu": (LigerGELUMulFunction, geglu_reference),
}
IN_PLACE_AT = {"swiglu": (1.0, 1.0), "geglu": ()}  # the arguments before `in_place`
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
    c = fn.apply(a_in, b_in, *IN_PLACE_AT[op], in_place)
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
@pytest.mark.parametrize("in_place", [True, None])
def test_in_place_backward(op, in_place):
    run_parity(op, SHAPES[0], torch.bfloat16, in_place=in_place)


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


# ----------------------------------------------------------------------------- fused MLP Function

MLP_ACTIVATIONS = {LigerSwiGLUMLP: "silu", LigerPhi3SwiGLUMLP: "silu", LigerGEGLUMLP: "gelu_tanh"}
FUSED = "LigerGatedMLPFunctionBackward"
MLP_SHAPES = sizes(  # (leading dims, hidden, intermediate)
    cpu=[((3, 5), 21, 37), ((2, 1, 3), 16, 300), ((1,), 8, 9)],  # odd; three leading dims, wide; one token
    gpu=[((2, 2048), 2048, 8192), ((3, 333), 1000, 2750)],  # Llama-3.2-1B MLP; odd
)


def make_mlp(module_cls, hidden, inter, dtype=torch.float32):
    cfg = Config()
    cfg.hidden_size, cfg.intermediate_size = hidden, inter
    torch.manual_seed(0)
    return module_cls(cfg).to(DEVICE, dtype)


def mlp_weights(mlp):
    """(gate, up, down) weights as ``gated_mlp_reference`` takes them (Phi-3: stacked, up None)."""
    if isinstance(mlp, LigerPhi3SwiGLUMLP):
        return mlp.gate_up_proj.weight, None, mlp.down_proj.weight
    return mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight


def unfused(mlp, x):
    """The MLP through its Linear modules and the gated Function: what the modules did before fusing."""
    fn = LigerGELUMulFunction if isinstance(mlp, LigerGEGLUMLP) else LigerSiLUMulFunction
    if isinstance(mlp, LigerPhi3SwiGLUMLP):
        a, b = mlp.gate_up_proj(x).chunk(2, dim=-1)
    else:
        a, b = mlp.gate_proj(x), mlp.up_proj(x)
    return mlp.down_proj(fn.apply(a, b))


def grads(x, weights):
    return [x.grad] + [None if w is None else w.grad for w in weights]


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
@pytest.mark.parametrize("shape", MLP_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_mlp_parity(module_cls, shape, dtype):
    lead, hidden, inter = shape
    activation = MLP_ACTIVATIONS[module_cls]
    mlp = make_mlp(module_cls, hidden, inter, dtype)
    weights = mlp_weights(mlp)
    x = randn(*lead, hidden, dtype=dtype, requires_grad=True, scale=2.0)
    dy = randn(*lead, hidden, dtype=dtype)
    y = mlp(x)
    assert type(y.grad_fn).__name__ == FUSED
    y.backward(dy)

    ref = as64(x, *weights)
    y64 = gated_mlp_reference(*ref, activation)
    y64.backward(dy.double())
    base = [None if t is None else t.to(dtype).detach().requires_grad_() for t in ref]
    yt = gated_mlp_reference(*base, activation)  # eager PyTorch in the same dtype: the yardstick
    yt.backward(dy)

    assert_matches("out", y, y64, yt)
    for name, g, g64, gt in zip(
        ("dx", "d_gate", "d_up", "d_down"), grads(x, weights), grads(*ref[:1], ref[1:]), grads(*base[:1], base[1:])
    ):
        if g64 is not None:
            assert_matches(name, g, g64, gt)


def test_fused_mlp_output_takes_in_place_ops():
    """Llama 4's MoE adds the routed experts into the shared expert's output in place: the fused
    Function's output must not be a view it created (autograd forbids modifying those)."""
    mlp = make_mlp(LigerSwiGLUMLP, 21, 37)
    x = randn(3, 5, 21, requires_grad=True)
    y = mlp(x)
    assert type(y.grad_fn).__name__ == FUSED
    y.add_(1.0)
    y.sum().backward()
    x64, *weights64 = as64(x.detach().requires_grad_(), *mlp_weights(mlp))
    (gated_mlp_reference(x64, *weights64, "silu") + 1.0).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
@pytest.mark.parametrize("trainable", ["down", "x_only", "weights_only"])
def test_fused_mlp_frozen_weights(module_cls, trainable):
    """LoRA-style frozen base weights: gradients only where asked, the rest None."""
    mlp = make_mlp(module_cls, 21, 37)
    weights = [w for w in mlp_weights(mlp) if w is not None]
    for w in weights[:-1]:
        w.requires_grad_(trainable == "weights_only")
    weights[-1].requires_grad_(trainable != "x_only")
    x = randn(3, 5, 21, requires_grad=trainable != "weights_only")
    dy = randn(3, 5, 21)
    y = mlp(x)
    assert type(y.grad_fn).__name__ == FUSED
    y.backward(dy)
    ref = as64(x, *mlp_weights(mlp))
    gated_mlp_reference(*ref, MLP_ACTIVATIONS[module_cls]).backward(dy.double())
    for name, g, g64 in zip(("dx", "d_gate", "d_up", "d_down"), grads(x, mlp_weights(mlp)), grads(*ref[:1], ref[1:])):
        assert (g is None) == (g64 is None), name
        if g is not None:
            assert_matches(name, g, g64)


class Wrapped(torch.nn.Module):
    """Stands in for PEFT's LoRA layer: a module that is not nn.Linear around one."""

    def __init__(self, linear):
        super().__init__()
        self.base_layer = linear

    def forward(self, x):
        return self.base_layer(x)


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
def test_wrapped_projection_takes_unfused_path(module_cls):
    mlp = make_mlp(module_cls, 21, 37)
    x = randn(3, 5, 21, requires_grad=True)
    expected = unfused(mlp, x)
    name = "gate_up_proj" if module_cls is LigerPhi3SwiGLUMLP else "up_proj"
    setattr(mlp, name, Wrapped(getattr(mlp, name)))
    y = mlp(x)
    assert type(y.grad_fn).__name__ != FUSED
    assert torch.equal(y, expected)


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
def test_projection_hooks_keep_working(module_cls):
    """A forward hook on a projection forces the unfused path, so the hook runs and its change counts."""
    mlp = make_mlp(module_cls, 21, 37)
    x = randn(3, 5, 21, requires_grad=True)
    calls = []
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, args: calls.append(1) or (args[0] * 2,))
    y = mlp(x)
    handle.remove()
    assert calls and type(y.grad_fn).__name__ != FUSED
    fused = mlp(x)
    assert type(fused.grad_fn).__name__ == FUSED
    assert_matches("hooked", y, 2 * fused.detach().double())


def test_fused_mlp_torch_impl(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    mlp = make_mlp(LigerSwiGLUMLP, 21, 37)
    x = randn(3, 5, 21, requires_grad=True)
    y = mlp(x)
    assert type(y.grad_fn).__name__ != FUSED  # the modules call their Linears
    weights = mlp_weights(mlp)
    # The Function itself falls back to the reference and differentiates it.
    yf = LigerGatedMLPFunction.apply(x, *weights, "silu")
    yf.backward(torch.ones_like(yf))
    ref = as64(x, *weights)
    gated_mlp_reference(*ref, "silu").backward(torch.ones_like(ref[0][..., :21]))
    assert_matches("out", y, gated_mlp_reference(*as64(x, *weights), "silu").detach())
    assert_matches("fn out", yf, gated_mlp_reference(*as64(x, *weights), "silu").detach())
    for name, g, g64 in zip(("dx", "d_gate", "d_up", "d_down"), grads(x, weights), grads(*ref[:1], ref[1:])):
        assert_matches(name, g, g64)


def test_autocast_takes_unfused_path():
    mlp = make_mlp(LigerSwiGLUMLP, 21, 37)
    x = randn(3, 5, 21)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        y = mlp(x)
        expected = unfused(mlp, x)
    assert type(y.grad_fn).__name__ != FUSED and y.dtype == torch.bfloat16
    assert torch.equal(y, expected)


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
def test_fused_mlp_saves_one_intermediate_less(module_cls):
    """Bytes kept for backward (distinct storages) by one MLP forward: fusing drops exactly c."""
    tokens, hidden, inter = 15, 21, 37
    mlp = make_mlp(module_cls, hidden, inter, torch.bfloat16)
    x = randn(3, 5, hidden, dtype=torch.bfloat16, requires_grad=True)

    def saved_bytes(forward):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = forward(mlp, x)
        return sum(storages.values()), y

    fused, y = saved_bytes(lambda m, t: m(t))
    plain, _ = saved_bytes(unfused)
    assert type(y.grad_fn).__name__ == FUSED
    assert plain - fused == tokens * inter * 2, (plain, fused)


def test_fused_mlp_empty_tokens():
    mlp = make_mlp(LigerSwiGLUMLP, 16, 24)
    x = randn(0, 16, requires_grad=True)
    y = mlp(x)
    y.sum().backward()
    assert y.shape == (0, 16) and x.grad.shape == (0, 16)
    assert torch.equal(mlp.down_proj.weight.grad, torch.zeros_like(mlp.down_proj.weight))


def test_fused_mlp_bad_inputs_name_the_argument():
    x, w, wd = randn(4, 8), randn(6, 8), randn(8, 6)
    with pytest.raises(ValueError, match="`activation`"):
        LigerGatedMLPFunction.apply(x, w, w, wd, "relu")
    with pytest.raises(ValueError, match="`up_weight`"):
        LigerGatedMLPFunction.apply(x, w, randn(5, 8), wd, "silu")
    with pytest.raises(ValueError, match="`down_weight`"):
        LigerGatedMLPFunction.apply(x, w, w, randn(8, 5), "silu")
    with pytest.raises(TypeError, match="`down_weight`.*bfloat16"):
        LigerGatedMLPFunction.apply(x, w, w, wd.bfloat16(), "silu")


def test_store_c_needs_a_contiguous_dc():
    """The fused MLP's backward writes c over dc: a dc laid out otherwise is refused, not mangled."""
    a, b = randn(6, 10), randn(6, 10)
    with pytest.raises(ValueError, match="`dc` must be contiguous"):
        gated_backward(randn(10, 6).t(), a, b, "silu", store_c=True)


# ----------------------------------------------------------------------------- Falcon-H1 multipliers

MULTIPLIERS = [(0.7, 1.9), (1.0, 0.25), (-1.3, 1.0)]  # both; down only (a power of two); a negative gate


@pytest.mark.parametrize("multipliers", MULTIPLIERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_multipliers_parity(multipliers, shape, dtype):
    """``LigerSiLUMulFunction.apply(a, b, gate_multiplier, down_multiplier)`` against float64, with
    Falcon-H1's own math in the same dtype (``up * silu(gate * gm)``, then ``* dm``) as the yardstick."""
    gm, dm = multipliers
    a, b = randn(*shape, dtype=dtype, requires_grad=True, scale=2.0), randn(*shape, dtype=dtype, requires_grad=True)
    dc = randn(*shape, dtype=dtype)
    a64, b64 = as64(a, b)
    c64 = swiglu_reference(a64, b64, gm, dm)
    c64.backward(dc.double())
    at, bt = (t.detach().clone().requires_grad_() for t in (a, b))
    ct = (bt * torch.nn.functional.silu(at * gm)) * dm
    ct.backward(dc)
    c = LigerSiLUMulFunction.apply(a.clone(), b.clone(), gm, dm)
    c.backward(dc)
    assert_matches("out", c, c64, ct)
    assert_matches("da", a.grad, a64.grad, at.grad)
    assert_matches("db", b.grad, b64.grad, bt.grad)


@pytest.mark.parametrize("module_cls", MLP_ACTIVATIONS)
def test_fused_mlp_multipliers(module_cls):
    """The fused MLP Function takes the multipliers too (``LigerFalconH1*`` modules run it)."""
    mlp = make_mlp(module_cls, 21, 37)
    weights = mlp_weights(mlp)
    x, dy = randn(3, 5, 21, requires_grad=True), randn(3, 5, 21)
    y = LigerGatedMLPFunction.apply(x, *weights, MLP_ACTIVATIONS[module_cls], 0.7, 1.9)
    y.backward(dy)
    ref = as64(x, *weights)
    y64 = gated_mlp_reference(*ref, MLP_ACTIVATIONS[module_cls], 0.7, 1.9)
    y64.backward(dy.double())
    assert_matches("out", y, y64)
    for name, g, g64 in zip(("dx", "d_gate", "d_up", "d_down"), grads(x, weights), grads(*ref[:1], ref[1:])):
        if g64 is not None:
            assert_matches(name, g, g64)


# ----------------------------------------------------------------------------- the peer's op helpers


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_op_helpers(impl, monkeypatch):
    """``swiglu_forward/backward``, ``geglu_forward/backward`` and the stacked gate|up pair: the
    Functions' values, without autograd, inputs left intact."""
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    a, b, dc = randn(3, 7, 37, scale=2.0), randn(3, 7, 37), randn(3, 7, 37)
    kept = (a.clone(), b.clone())
    a64, b64 = as64(a, b)
    for forward, backward, reference, extra in (
        (swiglu_forward, swiglu_backward, lambda x, y: swiglu_reference(x, y, 0.7), (0.7,)),
        (geglu_forward, geglu_backward, geglu_reference, ()),
    ):
        a_out, b_out, c = forward(a, b, *extra)
        assert a_out is a and b_out is b
        x, y = (t.detach().requires_grad_() for t in (a64, b64))
        c64 = reference(x, y)
        assert_matches("c", c, c64)
        da, db = backward(a, b, dc, *extra)
        da64, db64 = torch.autograd.grad(c64, (x, y), dc.double())
        assert_matches("da", da, da64)
        assert_matches("db", db, db64)
    y = torch.cat((a, b), dim=-1)
    assert_matches("fused c", swiglu_fused_gate_up_forward(y), swiglu_reference(a64, b64).detach())
    y64 = as64(y)[0].requires_grad_()
    (dy64,) = torch.autograd.grad(swiglu_fused_gate_up_reference(y64), y64, dc.double())
    assert_matches("fused dy", swiglu_fused_gate_up_backward(y, dc), dy64)
    assert torch.equal(a, kept[0]) and torch.equal(b, kept[1])
    with pytest.raises(ValueError, match="`y`.*even"):
        swiglu_fused_gate_up_forward(randn(3, 5))
