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
    tiled = LigerTiledSwiGLUMLP(Config(8, 12, "silu"), num_shards=2).to(DEVICE)
    plain = LigerSwiGLUMLP(Config(8, 12, "silu")).to(DEVICE)
    plain.load_state_dict(tiled.state_dict())
    seen = []
    if unfusable == "hooked":
        tiled.up_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    else:
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
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
    with pytest.raises(ValueError, match="`blocks`"):
        LigerTiledGatedMLPFunction.apply(x, w, w, down, "silu", 2, -1)


# (x shape, I, H_out, blocks of the GPU/CPU shapes that do not divide I)
ROUTE_SHAPE = sizes(cpu=((3, 5, 12), 36, 10), gpu=((2, 333, 256), 688, 200))
ROUTES = [0, 1, 2, 5, None]  # token shards; one block; blocks not dividing I; the default


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("blocks", ROUTES, ids=["tokens", "one_block", "2_blocks", "5_blocks", "auto"])
def test_backward_routes_match_float64(blocks, activation, dtype):
    """Both backward routes (token shards; blocks of the intermediate, their width not dividing I)
    against float64: y, dx and the three weight gradients, with H_out != H and unequal shards."""
    from liger_kernel.ops.swiglu import gated_mlp_reference
    from liger_kernel.ops.tiled_mlp import apply_tiled_gated_mlp

    x_shape, i, h_out = ROUTE_SHAPE
    h = x_shape[-1]
    x, dy = randn(*x_shape, dtype=dtype), randn(*x_shape[:-1], h_out, dtype=dtype)
    weights = [randn(i, h, dtype=dtype, scale=h**-0.5) for _ in range(2)] + [
        randn(h_out, i, dtype=dtype, scale=i**-0.5)
    ]
    act = "silu" if activation == "silu" else "gelu_tanh"

    def run(fn, *inputs):
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        y = fn(*inputs)
        return (y, *torch.autograd.grad(y, inputs, dy.to(y.dtype)))

    expected = run(lambda *t: gated_mlp_reference(*t, activation=act), *(t.double() for t in (x, *weights)))
    baseline = run(lambda *t: gated_mlp_reference(*t, activation=act), x, *weights)
    got = run(lambda *t: apply_tiled_gated_mlp(*t, act, num_shards=4, num_blocks=blocks), x, *weights)
    for name, a, e, bl in zip(("y", "dx", "d_gate", "d_up", "d_down"), got, expected, baseline):
        assert a.dtype == dtype
        assert_matches(name, a, e, bl)


@pytest.mark.parametrize("blocks", [0, 2], ids=["tokens", "blocks"])
def test_input_gradient_is_rounded_once(blocks):
    """dx = da @ W_gate + db @ W_up summed in fp32 and rounded once to bf16 on both routes: equal to
    the float64 sum of the same da, db rounded once, but for the rare fp32 sum at a rounding
    boundary (two roundings, each product then their sum, leave ~1 in 4 elements an ulp off)."""
    from liger_kernel.ops.swiglu import gated_backward
    from liger_kernel.ops.tiled_mlp import apply_tiled_gated_mlp

    n, h, i = 41, 24, 56
    x, dy = randn(n, h, dtype=torch.bfloat16), randn(n, h, dtype=torch.bfloat16)
    gate, up, down = (randn(*s, dtype=torch.bfloat16, scale=s[1] ** -0.5) for s in ((i, h), (i, h), (h, i)))
    got = torch.autograd.grad(
        apply_tiled_gated_mlp(x.requires_grad_(), gate, up, down, "silu", 1, blocks), x, dy
    )[0]  # fmt: skip
    a, b, dc = x.detach() @ gate.T, x.detach() @ up.T, dy @ down
    gated_backward(dc, a, b, "silu", a, b, False)  # the op's own da, db
    once = (a.double() @ gate.double() + b.double() @ up.double()).to(torch.bfloat16)
    assert (got == once).float().mean() > 0.98, (got != once).sum()


@pytest.mark.parametrize("blocks", [0, 2], ids=["tokens", "blocks"])
def test_backward_routes_with_frozen_weights_and_input(blocks):
    """Only what requires a gradient gets one, on both routes (more shards than rows: some empty)."""
    from liger_kernel.ops.swiglu import gated_mlp_reference
    from liger_kernel.ops.tiled_mlp import apply_tiled_gated_mlp

    x, gate, up, down = randn(7, 8), randn(12, 8, requires_grad=True), randn(12, 8), randn(8, 12, requires_grad=True)
    got = torch.autograd.grad(apply_tiled_gated_mlp(x, gate, up, down, "silu", 9, blocks).sum(), [gate, down])
    expected = torch.autograd.grad(gated_mlp_reference(x, gate, up, down).sum(), [gate, down])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("blocks", [None, 0, 2], ids=["auto", "tokens", "blocks"])
def test_weight_gradients_are_one_fp32_sum_of_all_tokens(monkeypatch, blocks):
    """Two token shards with the same rows and opposite upstream gradients (1 and -127/128): the down
    weight's gradient is their remainder, 1/128 of each shard's part. One fp32 sum of all tokens
    rounded once keeps it to bf16 precision; parts rounded to bf16 per shard before the sum lose up
    to a quarter of it."""
    import liger_kernel.ops.tiled_mlp as tiled_mlp

    if blocks is not None:
        monkeypatch.setattr(tiled_mlp, "_backward_blocks", lambda *shape: blocks)
    h, i, k = 16, 24, 5
    tiled = LigerTiledSwiGLUMLP(Config(h, i, "silu"), num_shards=2).to(DEVICE, torch.bfloat16)
    plain = LigerSwiGLUMLP(Config(h, i, "silu")).to(DEVICE, torch.bfloat16)
    plain.load_state_dict(tiled.state_dict())
    rows = randn(k, h, dtype=torch.bfloat16)
    sign = torch.randint(0, 2, (k, h), device=DEVICE).float() * 2 - 1
    x, dy = torch.cat([rows, rows]), torch.cat([sign, sign * -127 / 128]).to(torch.bfloat16)
    expected = grads_of(copy.deepcopy(plain).double(), x.double(), dy.double())[-1]
    baseline = grads_of(plain, x, dy)[-1]
    assert_matches("d_down", grads_of(tiled, x, dy)[-1], expected, baseline)


def test_backward_route_by_bytes():
    """Llama-3-8B widths in bf16: blocks of 1024 columns at 16K tokens (704 MiB against 1136 by
    token shards), token shards at 64K (1520 MiB against 1760). Blocks are at least 1024 columns
    wide (H / 4 below that: 10 at Gemma-3-4B's widths, 8 at Llama-3.2-1B's)."""
    from liger_kernel.ops.tiled_mlp import _backward_blocks, default_num_blocks

    assert default_num_blocks(4096, 14336) == 14
    assert default_num_blocks(2560, 10240) == 10 and default_num_blocks(2048, 8192) == 8
    assert _backward_blocks(16384, 4096, 14336, 4, 2) == 14
    assert _backward_blocks(65536, 4096, 14336, 16, 2) == 0
