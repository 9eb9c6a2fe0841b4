"""The tiled MLPs against the untiled modules whose parameters they share: outputs and every
gradient, float64 as the reference and the untiled module in the same dtype as the yardstick."""

import copy

import pytest
import torch
from parity import DEVICE, DTYPES, assert_matches, randn, sizes

from liger_kernel.ops.tiled_mlp import LigerTiledMLPFunction, apply_tiled_mlp, default_num_shards
from liger_kernel.transformers import LigerGEGLUMLP, LigerSwiGLUMLP, LigerTiledGEGLUMLP, LigerTiledSwiGLUMLP


class Config:
    def __init__(self, hidden_size, intermediate_size, hidden_act):
        self.hidden_size, self.intermediate_size, self.hidden_act = hidden_size, intermediate_size, hidden_act


# (B, T, H, I, shards, why)
SHAPES = sizes(
    cpu=[
        (2, 7, 16, 24, 3, "shards of unequal rows"),
        (1, 5, 8, 12, None, "default shards"),
        (1, 3, 8, 12, 5, "more shards than rows"),
    ],
    gpu=[(1, 16384, 4096, 14336, 4, "Llama-3-8B, 16K tokens"), (2, 333, 256, 688, 3, "odd rows")],
)
PAIRS = [(LigerTiledSwiGLUMLP, LigerSwiGLUMLP, "silu"), (LigerTiledGEGLUMLP, LigerGEGLUMLP, "gelu_pytorch_tanh")]


def grads_of(module, x, dy):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    params = list(module.parameters())
    return (y, *torch.autograd.grad(y, [x, *params], dy))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiled_cls, plain_cls, act", PAIRS, ids=["swiglu", "geglu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[-1] for s in SHAPES])
def test_matches_the_untiled_module(shape, tiled_cls, plain_cls, act, dtype):
    b, t, h, i, shards, _ = shape
    cfg = Config(h, i, act)
    plain = plain_cls(cfg).to(DEVICE, dtype)
    tiled = tiled_cls(cfg, num_shards=shards).to(DEVICE, dtype)
    tiled.load_state_dict(plain.state_dict())
    assert tiled.state_dict().keys() == plain.state_dict().keys()
    x, dy = randn(b, t, h, dtype=dtype), randn(b, t, h, dtype=dtype)
    expected = grads_of(copy.deepcopy(plain).double(), x.double(), dy.double())
    baseline = grads_of(plain, x, dy)
    got = grads_of(tiled, x, dy)
    for name, a, e, bl in zip(("y", "dx", "d_gate", "d_up", "d_down"), got, expected, baseline):
        assert a.dtype == bl.dtype
        assert_matches(name, a, e, bl)


def test_gradients_flow_through_autograd():
    """Parameter gradients are autograd outputs (``torch.autograd.grad`` returns them, ``.grad``
    is untouched by it, DDP's accumulate-grad hooks see the total), and ``backward`` accumulates
    them into ``.grad``. Tensor hooks on a parameter see the total last (through the generic
    tiled Function, also each shard's part during the recompute)."""
    tiled = LigerTiledSwiGLUMLP(Config(8, 12, "silu"), num_shards=2).to(DEVICE)
    x = randn(3, 5, 8, requires_grad=True)
    hooked = []
    tiled.up_proj.weight.register_hook(lambda g: hooked.append(g.clone()))
    _, g_up = torch.autograd.grad(tiled(x).sum(), [x, tiled.up_proj.weight])
    assert all(p.grad is None for p in tiled.parameters())
    torch.testing.assert_close(hooked[-1], g_up)
    tiled(x).sum().backward()
    tiled(x).sum().backward()
    plain = LigerSwiGLUMLP(Config(8, 12, "silu")).to(DEVICE)
    plain.load_state_dict(tiled.state_dict())
    (plain(x.detach()).sum() * 2).backward()
    for p, q in zip(tiled.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_frozen_parameters_and_input_without_grad():
    """Only what requires a gradient gets one (a frozen gate, an input outside the graph)."""
    tiled = LigerTiledSwiGLUMLP(Config(8, 12, "silu"), num_shards=3).to(DEVICE)
    tiled.gate_proj.weight.requires_grad_(False)
    tiled(randn(2, 5, 8)).sum().backward()
    assert tiled.gate_proj.weight.grad is None
    assert tiled.up_proj.weight.grad is not None and tiled.down_proj.weight.grad is not None


def test_apply_tiled_mlp_with_explicit_params():
    """``compute_params`` names the parameters that get gradients; ``fn`` may be any function."""
    w = randn(8, 8, requires_grad=True)
    x = randn(4, 3, 8, requires_grad=True)
    fn = lambda module, rows: torch.tanh(rows @ w)  # noqa: E731
    y = apply_tiled_mlp(fn, torch.nn.Module(), x, num_shards=5, compute_params=[w])
    gx, gw = torch.autograd.grad(y.square().sum(), [x, w])
    ex, ew = torch.autograd.grad(torch.tanh(x @ w).square().sum(), [x, w])
    torch.testing.assert_close((gx, gw), (ex, ew))


def test_default_shards_hold_about_hidden_size_tokens():
    assert default_num_shards(torch.empty(2, 4096, 1024)) == 8
    assert default_num_shards(torch.empty(3, 8)) == 1


def test_bad_shards_name_the_argument():
    with pytest.raises(ValueError, match="`shards`"):
        LigerTiledMLPFunction.apply(lambda m, x: x * 2, torch.nn.Module(), randn(3, 4, requires_grad=True), 0)


def test_under_torch_compile():
    """Compiled callers run the tiled Function eagerly (a graph break) with the same gradients."""
    tiled = LigerTiledSwiGLUMLP(Config(8, 12, "silu"), num_shards=3).to(DEVICE)
    plain = LigerSwiGLUMLP(Config(8, 12, "silu")).to(DEVICE)
    plain.load_state_dict(tiled.state_dict())
    x = randn(2, 5, 8, requires_grad=True)
    torch.compile(lambda x: tiled(x).sum() * 2, backend="eager")(x).backward()
    x2 = x.detach().requires_grad_()
    (plain(x2).sum() * 2).backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for p, q in zip(tiled.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def _count_gated_forwards(monkeypatch):
    """Count calls of the gated forward kernel's launcher, wherever it is called from."""
    import liger_kernel.ops.swiglu as swiglu
    import liger_kernel.ops.tiled_mlp as tiled_mlp

    calls, gated_forward = [], swiglu.gated_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return gated_forward(*args, **kwargs)

    monkeypatch.setattr(swiglu, "gated_forward", counting)
    monkeypatch.setattr(tiled_mlp, "gated_forward", counting)
    return calls


@pytest.mark.parametrize("tiled_cls, plain_cls, act", PAIRS, ids=["swiglu", "geglu"])
def test_backward_recomputes_gate_and_up_only(monkeypatch, tiled_cls, plain_cls, act):
    """Plain projections take the tiled gated Function: the backward recomputes each shard's gate
    and up matmuls, not the down projection of their product (no gated forward in backward), with
    the untiled module's gradients."""
    calls = _count_gated_forwards(monkeypatch)
    tiled = tiled_cls(Config(8, 12, act), num_shards=3).to(DEVICE)
    plain = plain_cls(Config(8, 12, act)).to(DEVICE)
    plain.load_state_dict(tiled.state_dict())
    x, dy = randn(2, 5, 8), randn(2, 5, 8)
    y = tiled(x.requires_grad_())
    assert len(calls) == 3
    got = torch.autograd.grad(y, [x, *tiled.parameters()], dy)
    assert len(calls) == 3
    expected = torch.autograd.grad(plain(x), [x, *plain.parameters()], dy)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("unfusable", ["hooked", "pytorch"])
def test_generic_tiled_function_where_the_mlp_is_not_fused(monkeypatch, unfusable):
    """A hooked projection (as PEFT's or ZeRO-3's) or the PyTorch path: the tiled module runs the
    generic tiled Function around the untiled forward (the hook fires per shard, recompute too)."""
    import liger_kernel.transformers.tiled_mlp as tiled_module

    tiled = LigerTiledSwiGLUMLP(Config(8, 12, "silu"), num_shards=2).to(DEVICE)
    plain = LigerSwiGLUMLP(Config(8, 12, "silu")).to(DEVICE)
    plain.load_state_dict(tiled.state_dict())
    seen = []
    if unfusable == "hooked":
        tiled.up_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    else:
        monkeypatch.setattr(tiled_module, "use_triton", lambda t: False)
    x, dy = randn(7, 8), randn(7, 8)
    got = torch.autograd.grad(tiled(x.requires_grad_()), [x, *tiled.parameters()], dy)
    expected = torch.autograd.grad(plain(x), [x, *plain.parameters()], dy)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)
    assert seen == ([4, 3, 4, 3] if unfusable == "hooked" else [])


def test_tiled_gated_function_checks_its_arguments():
    from liger_kernel.ops.tiled_mlp import LigerTiledGatedMLPFunction

    x, w, down = randn(3, 4, requires_grad=True), randn(6, 4), randn(4, 6)
    with pytest.raises(ValueError, match="`shards`"):
        LigerTiledGatedMLPFunction.apply(x, w, w, down, "silu", 0)
    with pytest.raises(ValueError, match="`up_weight`"):
        LigerTiledGatedMLPFunction.apply(x, randn(12, 4), None, down, "silu", 2)
    with pytest.raises(ValueError, match="`activation`"):
        LigerTiledGatedMLPFunction.apply(x, w, w, down, "relu", 2)
