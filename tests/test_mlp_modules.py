"""The MLP modules integrators import, each against the transformers module it stands in for (or
the plain-torch math where transformers has none): forward and every gradient, float64 as the
reference and the transformers module in the same dtype as the yardstick."""

import copy

import pytest
import torch
import torch.nn.functional as F
from parity import DEVICE, assert_matches, randn
from transformers.models.falcon_h1.configuration_falcon_h1 import FalconH1Config
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1MLP
from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
from transformers.models.gemma4.modeling_gemma4 import Gemma4TextMLP
from transformers.models.hunyuan_v1_dense.configuration_hunyuan_v1_dense import HunYuanDenseV1Config
from transformers.models.hunyuan_v1_dense.modeling_hunyuan_v1_dense import HunYuanDenseV1MLP
from transformers.models.muse_glimmer.configuration_muse_glimmer import MuseGlimmerTextConfig
from transformers.models.muse_glimmer.modeling_muse_glimmer import MuseGlimmerTextMLP
from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP

import liger_kernel.transformers as lt
from liger_kernel.transformers.mlp import LigerFalconH1MLP, LigerMLP

SIZES = dict(hidden_size=24, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2)


class PlainGatedMLP(torch.nn.Module):
    """``down(act(gate(x)) * up(x))`` in plain torch, with the given projection names."""

    def __init__(self, act, gate="gate_proj", up="up_proj", down="down_proj"):
        super().__init__()
        self.act, self.names = act, (gate, up, down)
        for name, shape in zip(self.names, ((40, 24), (40, 24), (24, 40))):
            setattr(self, name, torch.nn.Linear(shape[1], shape[0], bias=False))

    def forward(self, x):
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(self.act(gate(x)) * up(x))


class Config:
    hidden_size, intermediate_size, hidden_act = 24, 40, "silu"


def config(hidden_act):
    cfg = Config()
    cfg.hidden_act = hidden_act
    return cfg


def gemma4_config():
    layers = dict(num_hidden_layers=2, layer_types=["full_attention"] * 2, num_kv_shared_layers=1)
    return Gemma4TextConfig(use_double_wide_mlp=True, vocab_size=64, **layers, **SIZES)


def falcon_config(bias=False):
    return FalconH1Config(mlp_multipliers=[0.7, 1.9], mlp_bias=bias, num_hidden_layers=1, vocab_size=64, **SIZES)


relu2 = lambda t: F.relu(t).square()  # noqa: E731
gelu_tanh = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731

# (id, ours, the module it stands in for)
CASES = [
    ("qwen3_moe", lambda: lt.LigerQwen3MoeSwiGLUMLP(Qwen3MoeConfig(**SIZES), 17),
     lambda: Qwen3MoeMLP(Qwen3MoeConfig(**SIZES), 17)),
    ("hunyuan_v1", lambda: lt.LigerHunyuanV1SwiGLUMLP(HunYuanDenseV1Config(**SIZES), layer_idx=0),
     lambda: HunYuanDenseV1MLP(HunYuanDenseV1Config(**SIZES), layer_idx=0)),
    ("falcon_h1_swiglu", lambda: lt.LigerFalconH1SwiGLUMLP(falcon_config()), lambda: FalconH1MLP(falcon_config())),
    ("falcon_h1_swiglu_bias", lambda: lt.LigerFalconH1SwiGLUMLP(falcon_config(True)),
     lambda: FalconH1MLP(falcon_config(True))),
    ("falcon_h1_mlp", lambda: LigerFalconH1MLP(falcon_config()), lambda: FalconH1MLP(falcon_config())),
    ("falcon_h1_mlp_bias", lambda: LigerFalconH1MLP(falcon_config(True)), lambda: FalconH1MLP(falcon_config(True))),
    ("muse_glimmer", lambda: lt.LigerSwiGLUMLPForMuseGlimmer(MuseGlimmerTextConfig(**SIZES)),
     lambda: MuseGlimmerTextMLP(MuseGlimmerTextConfig(**SIZES))),
    ("gemma4_layer0", lambda: lt.LigerGEGLUMLPForGemma4(gemma4_config(), 0), lambda: Gemma4TextMLP(gemma4_config(), 0)),
    ("gemma4_double_wide", lambda: lt.LigerGEGLUMLPForGemma4(gemma4_config(), 1),
     lambda: Gemma4TextMLP(gemma4_config(), 1)),
    ("block_sparse_top2", lambda: lt.LigerBlockSparseTop2MLP(Config()),
     lambda: PlainGatedMLP(F.silu, "w1", "w3", "w2")),
    ("mlp_silu", lambda: LigerMLP(config("silu")), lambda: PlainGatedMLP(F.silu)),
    ("mlp_gelu_tanh", lambda: LigerMLP(config("gelu_pytorch_tanh")), lambda: PlainGatedMLP(gelu_tanh)),
    ("mlp_relu2_torch_ops", lambda: LigerMLP(config("relu2")), lambda: PlainGatedMLP(relu2)),
]  # fmt: skip


def run(module, x, dy):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(dy.to(y.dtype))
    return [y, x.grad] + [p.grad for _, p in sorted(module.named_parameters())]


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_module_matches_transformers(case, impl, monkeypatch):
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    _, make_ours, make_theirs = case
    torch.manual_seed(0)
    theirs = make_theirs().to(DEVICE)
    ours = make_ours().to(DEVICE)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x, dy = randn(2, 7, 24, scale=2.0), randn(2, 7, 24)
    got = run(ours, x, dy)
    expected = run(copy.deepcopy(theirs).double(), x.double(), dy)
    baseline = run(theirs, x, dy)
    names = ["out", "dx"] + [n for n, _ in sorted(ours.named_parameters())]
    for name, g, e, b in zip(names, got, expected, baseline):
        assert_matches(name, g, e, b)


def test_falcon_h1_attributes_and_activation_errors():
    mlp = lt.LigerFalconH1SwiGLUMLP(falcon_config())
    assert (mlp.gate_multiplier, mlp.down_multiplier) == (0.7, 1.9)
    assert (LigerFalconH1MLP(falcon_config()).gate_multiplier, LigerMLP(Config()).down_multiplier) == (0.7, 1.0)
    with pytest.raises(ValueError, match="config.hidden_act"):
        LigerMLP(config("tanh"))
    with pytest.raises(ValueError, match="config.hidden_act"):
        lt.LigerBlockSparseTop2MLP(config("gelu"))


def test_gemma4_width_follows_kv_sharing():
    cfg = gemma4_config()
    assert lt.LigerGEGLUMLPForGemma4(cfg).intermediate_size == 40
    assert lt.LigerGEGLUMLPForGemma4(cfg, 1).intermediate_size == 80


def test_multipliers_reach_the_kernel_once():
    """Falcon-H1's multipliers ride in the fused MLP Function: one autograd node, no scaling ops."""
    mlp = lt.LigerFalconH1SwiGLUMLP(falcon_config()).to(DEVICE)
    y = mlp(randn(3, 24, requires_grad=True))
    assert type(y.grad_fn).__name__ == "LigerGatedMLPFunctionBackward"


NAMES = [
    "LigerBlockSparseTop2MLP", "LigerQwen3MoeSwiGLUMLP", "LigerHunyuanV1SwiGLUMLP", "LigerFalconH1SwiGLUMLP",
    "LigerSwiGLUMLPForMuseGlimmer", "LigerGEGLUMLPForGemma4", "LigerMLP", "LigerFalconH1MLP",
    "liger_rotary_pos_emb_gpt_oss", "liger_rotary_pos_emb_vision",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_exported_from_liger_kernel_transformers(name):
    assert name in lt.__all__ and getattr(lt, name) is not None
