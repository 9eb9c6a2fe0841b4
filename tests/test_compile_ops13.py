"""torch.compile for the layer ops of ``ops/library_layers.py`` (M-RoPE, Llama 4 RoPE, fused add
RMSNorm, fused MoE experts, the tiled gated MLP): ``opcheck`` passes for every op, and the modules and
functionals compile with ``fullgraph=True`` (no graph break) and give the eager results."""

import types

import pytest
import torch
from parity import DEVICE, randn
from test_compile import BACKEND, TOLERANCE, _no_graph_breaks, _rows

from liger_kernel.ops import library, library_layers
from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
from liger_kernel.ops.fused_moe import LigerFusedMoEFunction
from liger_kernel.ops.llama4_rope import LigerLlama4RopeFunction
from liger_kernel.ops.qwen2vl_mrope import LigerQwen2VLMRopeFunction
from liger_kernel.ops.tiled_mlp import LigerTiledGatedMLPFunction, apply_tiled_gated_mlp
from liger_kernel.transformers import LigerFusedAddRMSNorm
from liger_kernel.transformers.functional import liger_fused_add_rms_norm, liger_qwen2vl_mrope
from liger_kernel.transformers.llama4_rope import liger_llama4_text_rotary_pos_emb
from liger_kernel.transformers.swiglu import LigerExperts
from liger_kernel.transformers.tiled_mlp import LigerTiledSwiGLUMLP

pytestmark = pytest.mark.skipif(not library.ENABLED, reason="torch without torch.library.custom_op")

H, T, E, INTER = 48, 7, 3, 8
SECTIONS = [1, 1, 2]  # M-RoPE over 8 features: sum = 8 / 2


def _angles(*shape):
    return torch.arange(torch.Size(shape).numel(), device=DEVICE, dtype=torch.float32).reshape(shape) / 7


def _moe_config(gpt_oss: bool):
    if gpt_oss:
        return types.SimpleNamespace(
            hidden_size=H, intermediate_size=INTER, num_local_experts=E, hidden_act="silu", swiglu_limit=0.5
        )
    return types.SimpleNamespace(hidden_size=H, moe_intermediate_size=INTER, num_experts=E, hidden_act="silu")


def _experts(gpt_oss: bool):
    experts = LigerExperts(_moe_config(gpt_oss)).to(DEVICE)
    for p in experts.parameters():
        p.data.normal_(std=0.3)
    index = torch.randint(0, E + 1, (T, 2), device=DEVICE)  # E: a pair routed nowhere

    def loss(x):
        return (experts(x, index, x[:, :2].softmax(-1)) * x.detach().cos()).sum()

    return loss


def cases():
    torch.manual_seed(0)
    mrope_cos, mrope_sin = _angles(3, 1, T, 8).cos(), _angles(3, 1, T, 8).sin()
    freqs = torch.polar(torch.ones(T, 4, device=DEVICE), _angles(T, 4))
    norm = LigerFusedAddRMSNorm(H).to(DEVICE)
    norm.weight.data.normal_()

    def mrope(x):
        q = x[:, :32].reshape(1, T, 4, 8).transpose(1, 2)  # [B, T, H, D] viewed as [B, H, T, D]
        k = x[:, 32:40].reshape(1, 1, T, 8)
        return sum((t * t.detach().sin()).sum() for t in liger_qwen2vl_mrope(q, k, mrope_cos, mrope_sin, SECTIONS))

    def llama4(x):
        q, k = x[:, :32].reshape(1, T, 4, 8), x[:, 32:40].reshape(1, T, 1, 8)
        return sum((t * t.detach().sin()).sum() for t in liger_llama4_text_rotary_pos_emb(q, k, freqs))

    def fused_add(x, module=True):
        y, s = norm(x, x.flip(0)) if module else liger_fused_add_rms_norm(x, x * 2, norm.weight, 1e-6, 1.0, "gemma")
        return (y * x.detach().cos()).sum() + (s * x.detach().sin()).sum()

    return {
        "qwen2vl_mrope": mrope,
        "llama4_rope": llama4,
        "fused_add_rms_norm": fused_add,
        "fused_add_rms_norm_gemma": lambda x: fused_add(x, module=False),
        "fused_add_rms_norm_normed_only": lambda x: (norm(x, x.flip(0))[0] * x.detach().cos()).sum(),
        "fused_moe": _experts(gpt_oss=False),
        "fused_moe_gpt_oss": _experts(gpt_oss=True),
        "tiled_gated_mlp": _tiled_mlp(),  # the backward by blocks of the intermediate
        "tiled_gated_mlp_token_shards": _tiled_mlp(blocks=0),
    }


def _tiled_mlp(blocks=None):
    torch.manual_seed(0)
    mlp = LigerTiledSwiGLUMLP(types.SimpleNamespace(hidden_size=H, intermediate_size=24, hidden_act="silu"), 3)
    for p in mlp.to(DEVICE).parameters():
        p.data.normal_(std=0.3)
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    if blocks is None:
        return lambda x: (mlp(x) * x.detach().cos()).sum()
    return lambda x: (apply_tiled_gated_mlp(x, *weights, "silu", 3, blocks) * x.detach().cos()).sum()


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", list(cases()))
def test_op_under_compile_matches_eager(name, dynamic):
    fn = cases()[name]
    x = randn(T, H, requires_grad=True)
    eager = fn(x)
    (eager_grad,) = torch.autograd.grad(eager, [x])
    _no_graph_breaks(fn, x)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=BACKEND, fullgraph=True, dynamic=dynamic)(x)
    (compiled_grad,) = torch.autograd.grad(compiled, [x])
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    torch.testing.assert_close(compiled_grad, eager_grad, **TOLERANCE)


def test_compiled_experts_weight_gradients_match_eager():
    """Every parameter of the experts (GPT-OSS: biases too) gets the eager gradient."""
    torch.manual_seed(0)
    experts = LigerExperts(_moe_config(gpt_oss=True)).to(DEVICE)
    for p in experts.parameters():
        p.data.normal_(std=0.3)
    index = torch.randint(0, E, (T, 2), device=DEVICE)
    x, weights = randn(T, H), randn(T, 2).softmax(-1)

    def step(x):
        return (experts(x, index, weights) * x.cos()).sum()

    def grads(loss):
        return torch.autograd.grad(loss, list(experts.parameters()))

    eager = grads(step(x))
    torch._dynamo.reset()
    compiled = grads(torch.compile(step, backend=BACKEND, fullgraph=True)(x))
    for name, c, e in zip(dict(experts.named_parameters()), compiled, eager):
        torch.testing.assert_close(c, e, msg=name, **TOLERANCE)


def opcheck_cases():
    """(op, arguments): every forward op with inputs that need gradients (its autograd formula is
    checked), every backward op on plain tensors."""
    torch.manual_seed(0)
    q = _rows(2, 5, 4, 8).transpose(1, 2)
    k = _rows(2, 2, 5, 8)
    cos, sin = _angles(3, 2, 5, 8).cos(), _angles(3, 2, 5, 8).sin()
    freqs = torch.view_as_real(torch.polar(torch.ones(5, 4, device=DEVICE), _angles(5, 4))).flatten(-2)
    lq, lk = _rows(2, 5, 4, 8), _rows(2, 5, 2, 8).transpose(1, 2).contiguous().transpose(1, 2)
    x, r, w = _rows(3, 5, H), _rows(3, 5, H), _rows(H)
    s, _, stats = (t.detach() for t in library_layers.fused_add_rms_norm(x, r, w, 1e-6, 0.0, "llama"))
    d = x.detach()
    mlp_weights = [_rows(n, m) * 0.3 for n, m in ((24, H), (24, H), (H, 24))]
    moe = []
    for gpt_oss in (False, True):
        experts = LigerExperts(_moe_config(gpt_oss)).to(DEVICE)
        for p in experts.parameters():
            p.data.normal_(std=0.3)
        params = [p.detach().requires_grad_() for p in (experts.gate_up_proj, experts.down_proj)]
        biases = [None if b is None else b.detach().requires_grad_() for b in (experts.gate_up_proj_bias,
                                                                               experts.down_proj_bias)]  # fmt: skip
        # Every pair routed (the rows of gu of a pair routed nowhere are left unwritten, and opcheck
        # compares all outputs): the compile tests route pairs nowhere.
        index = torch.randint(0, E, (T, 2), device=DEVICE)
        tensors = (_rows(T, H), *params, index, _rows(T, 2), *biases)
        options = (gpt_oss, not gpt_oss, experts.alpha, experts.limit)
        _, *saved = (t.detach() for t in library_layers.fused_moe(*tensors, *options))
        plain = [t if t is None or not t.is_floating_point() else t.detach() for t in tensors]
        moe.append((tensors, options, (randn(T, H), *plain, *saved, *options, [True] * 6)))
    return {
        "qwen2vl_mrope": (library_layers.qwen2vl_mrope, (q, k, cos, sin, SECTIONS, 1, False, [], [])),
        "qwen2vl_mrope_inverse": (
            library_layers.qwen2vl_mrope,
            (q.detach(), k.detach(), cos, sin, SECTIONS, 1, True, [0, 2, 1, 3], [0, 1, 2, 3]),
        ),
        "llama4_rope": (library_layers.llama4_rope, (lq, lk, freqs, False, [], [])),
        "llama4_rope_inverse": (
            library_layers.llama4_rope,
            (lq.detach(), lk.detach(), freqs, True, [0, 1, 2, 3], [0, 2, 1, 3]),
        ),
        "fused_add_rms_norm": (library_layers.fused_add_rms_norm, (x, r, w, 1e-6, 0.0, "llama")),
        "fused_add_rms_norm_gemma": (library_layers.fused_add_rms_norm, (x, r, None, 1e-6, 1.0, "gemma")),
        "fused_add_rms_norm_backward": (
            library_layers.fused_add_rms_norm_backward_op,
            (d, d.flip(0), s, w.detach(), stats, 1e-6, 0.0, "llama", True),
        ),
        "fused_add_rms_norm_backward_no_ds": (
            library_layers.fused_add_rms_norm_backward_op,
            (d, None, s, w.detach(), stats, 1e-6, 0.0, "llama", False),
        ),
        "fused_moe": (library_layers.fused_moe, (*moe[0][0], *moe[0][1])),
        "fused_moe_gpt_oss": (library_layers.fused_moe, (*moe[1][0], *moe[1][1])),
        "fused_moe_backward": (library_layers.fused_moe_backward_op, moe[0][2]),
        "fused_moe_backward_gpt_oss": (library_layers.fused_moe_backward_op, moe[1][2]),
        "tiled_gated_mlp": (library_layers.tiled_gated_mlp, (x.view(-1, H), *mlp_weights, "silu", 2, 3)),
        "tiled_gated_mlp_backward": (
            library_layers.tiled_gated_mlp_backward,
            (
                d.view(-1, H),
                d.view(-1, H),
                *(t.detach() for t in mlp_weights),
                "gelu_tanh",
                2,
                0,
                True,
                True,
                False,
                True,
            ),
        ),
    }


@pytest.mark.parametrize("impl", ["default", "torch"])
@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_opcheck(name, impl, monkeypatch):
    """Kernels (on the GPU, or the CPU under the interpreter), and the reference (``LIGER_KERNEL_IMPL=torch``)."""
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize(
    "function, op",
    [
        (LigerQwen2VLMRopeFunction, "qwen2vl_mrope"),
        (LigerLlama4RopeFunction, "llama4_rope"),
        (LigerFusedAddRMSNormFunction, "fused_add_rms_norm"),
        (LigerFusedMoEFunction, "fused_moe"),
        (LigerTiledGatedMLPFunction, "tiled_gated_mlp"),
    ],
)
def test_eager_calls_keep_the_functions(function, op):
    """Outside compile the modules and functionals call the Functions, not the custom ops."""
    assert op in library._TWINS
    assert library.apply_of(function, op) == function.apply
