"""Patching by structure: a model whose type no table entry names gets our RMSNorm, gated MLPs,
rotary function and fused loss where its modules compute what ours do, each checked on the spot;
look-alikes stay stock, and the report's revert restores the stock model."""

import copy
import importlib
import logging

import pytest
import torch
import torch.nn as nn
from parity import DEVICE, assert_matches

transformers = pytest.importorskip("transformers")
from test_convergence import assert_converges, build, float64_copy, make_batch, train  # noqa: E402

from liger_kernel.transformers import (  # noqa: E402
    StructuralPatchReport,
    apply_liger_kernel,
    apply_liger_kernel_by_structure,
    monkey_patch,  # noqa: E402
)
from liger_kernel.transformers.model_specs import MODEL_SPECS  # noqa: E402
from liger_kernel.transformers.rms_norm import LigerRMSNorm  # noqa: E402

# model type -> (RMSNorms, MLPs) of the tiny models of test_convergence (2 layers)
EXPECTED = {"llama": (5, 2), "qwen2": (5, 2), "gemma2": (9, 2)}
NUMERICS = {"llama": "offset=0.0 casting_mode='llama'", "qwen2": "offset=0.0 casting_mode='llama'"}
NUMERICS["gemma2"] = "offset=1.0 casting_mode='gemma'"


@pytest.fixture(autouse=True)
def revert_all():
    yield
    for model_type in EXPECTED:
        getattr(monkey_patch, f"revert_liger_kernel_to_{model_type}")()


def hide(monkeypatch, model_type):
    monkeypatch.delitem(monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN, model_type)


def kinds(report, word):
    return [line for line in report.patched if word in line]


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_stock_model_patched_by_structure_converges_as_the_table_patch(model_type, monkeypatch):
    """The table entry hidden, the instance patch finds every norm (with the family's numerics),
    MLP and the forward; training converges as stock does, and as the table patch (same kernels,
    same numerics) to the bit."""
    rope = model_type == "llama"  # one family: the interpreted RoPE kernel is slow on CPU
    stock = build(model_type, torch.float32)
    model64, structural, initial = float64_copy(stock), copy.deepcopy(stock), copy.deepcopy(stock)
    reports = []

    def make():
        with monkeypatch.context() as hidden:
            hide(hidden, model_type)
            reports.append(monkey_patch._apply_liger_kernel_to_instance(structural, rope=rope))
        return structural

    assert_converges(f"{model_type} by structure", model64, stock, make)
    report = reports[0]
    norms, mlps = EXPECTED[model_type]
    assert isinstance(report, StructuralPatchReport) and not report.left, str(report)
    assert len(kinds(report, "LigerRMSNorm")) == norms
    assert all(NUMERICS[model_type] in line for line in kinds(report, "LigerRMSNorm"))
    assert len(kinds(report, "kernel")) == mlps
    assert len(kinds(report, "generic forward")) == 1
    assert len(kinds(report, "liger_rotary_pos_emb")) == rope

    report.revert()
    monkey_patch._apply_liger_kernel_to_instance(initial, rope=rope)
    train(initial)  # the table patch's run, from the same initial state: same kernels, same numerics
    named = dict(initial.named_parameters())
    for name, p in structural.named_parameters():
        torch.testing.assert_close(p, named[name], rtol=0, atol=0, msg=name)


class MyRMSNorm(nn.Module):
    """An RMSNorm by another name: ``eps``, Llama's casting."""

    def __init__(self, size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class EpsOutsideNorm(MyRMSNorm):
    """Looks like an RMSNorm, but adds eps to the root: differs where mean(x^2) ~ eps."""

    def forward(self, x):
        return self.weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)


class MyMLP(nn.Module):
    def __init__(self, size, width, act, multiplier=1.0):
        super().__init__()
        self.gate_proj = nn.Linear(size, width, bias=False)
        self.up_proj = nn.Linear(size, width, bias=False)
        self.down_proj = nn.Linear(width, size, bias=False)
        self.act = act
        self.multiplier = multiplier

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x) * self.multiplier) * self.up_proj(x))


class MyDecoder(nn.Module):
    """Residual blocks of (norm, MLP): no config, no attention, an unknown type."""

    def __init__(self, norms, mlps, size=24, vocab=37):
        super().__init__()
        self.embed = nn.Embedding(vocab, size)
        self.norms = nn.ModuleList(norms)
        self.mlps = nn.ModuleList(mlps)
        self.head = nn.Linear(size, vocab, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for norm, mlp in zip(self.norms, self.mlps):
            h = h + mlp(norm(h))
        return self.head(h)


def outputs_and_grads(model, ids):
    logits = model(ids)
    grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
    return [logits, *grads]


def test_custom_model_patched_and_matching_stock():
    size, width = 24, 40
    torch.manual_seed(0)
    model = MyDecoder(
        [MyRMSNorm(size), MyRMSNorm(size, eps=1e-6)],
        [MyMLP(size, width, nn.SiLU()), MyMLP(size, width, nn.GELU(approximate="tanh"))],
    ).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stock, model64 = copy.deepcopy(model), copy.deepcopy(model).double()
    report = apply_liger_kernel(model)
    assert not report.left, str(report)
    assert [type(n) for n in model.norms] == [LigerRMSNorm, LigerRMSNorm]
    assert [n.variance_epsilon for n in model.norms] == [1e-5, 1e-6]
    assert ["swiglu kernel" in line for line in kinds(report, "mlps")] == [True, False]
    assert isinstance(model.mlps[0], MyMLP)  # the stock class stays a base
    ids = torch.randint(0, 37, (3, 7), device=DEVICE)
    names = ["logits", *(n for n, _ in model.named_parameters())]
    got, expected, exact = (outputs_and_grads(m, ids) for m in (model, stock, model64))
    for name, g, e, x in zip(names, got, expected, exact):
        assert_matches(name, g, x, e)
    report.revert()
    assert [type(n) for n in model.norms] == [MyRMSNorm, MyRMSNorm]
    assert [type(m) for m in model.mlps] == [MyMLP, MyMLP]
    for g, e in zip(outputs_and_grads(model, ids), expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_gemma_numerics_detected_in_bfloat16():
    """A (1 + w) norm applied in fp32 (Gemma's) in a bf16 model: the probe picks Gemma's casting,
    which reproduces it; Llama's would round x_hat first."""

    class OneplusNorm(MyRMSNorm):
        def forward(self, x):
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight.float())).to(
                x.dtype
            )

    model = MyDecoder([OneplusNorm(24)], [MyMLP(24, 40, nn.SiLU())]).to(DEVICE, torch.bfloat16)
    report = apply_liger_kernel_by_structure(model)
    assert any("offset=1.0 casting_mode='gemma'" in line for line in report.patched), str(report)
    report.revert()


def test_lookalikes_stay_stock():
    """Norms that are not RMSNorms (eps outside the root, LayerNorm without and with a bias),
    an MLP with a multiplier and one with exact GELU: verification or the activation check
    rejects them, with the reason; the model computes as before."""
    size, width = 24, 40
    torch.manual_seed(0)
    norms = [EpsOutsideNorm(size), nn.LayerNorm(size, bias=False), nn.LayerNorm(size)]
    mlps = [MyMLP(size, width, nn.SiLU(), multiplier=0.5), MyMLP(size, width, nn.GELU()), MyMLP(size, width, nn.SiLU())]
    model = MyDecoder(norms, mlps).to(DEVICE)
    ids = torch.randint(0, 37, (2, 5), device=DEVICE)
    expected = model(ids)
    report = apply_liger_kernel_by_structure(model)
    assert [type(n) for n in model.norms] == [EpsOutsideNorm, nn.LayerNorm, nn.LayerNorm]
    assert [type(m).__name__ for m in model.mlps] == ["MyMLP", "MyMLP", "LigerMyMLP"]
    assert len(report.left) == 5 and all("norms" in line for line in report.left[:3]), str(report)
    assert "max error" in report.left[3] and "no kernel for its activation (GELU)" in report.left[4]
    torch.testing.assert_close(model(ids), expected, rtol=1e-5, atol=1e-6)


def test_revert_restores_stock(monkeypatch):
    hide(monkeypatch, "llama")
    model = build("llama", torch.float32)
    modeling = importlib.import_module(MODEL_SPECS["llama"].module)
    rotary, classes = modeling.apply_rotary_pos_emb, [type(m) for m in model.modules()]
    params = {n: p for n, p in model.named_parameters()}
    ids, labels = make_batch(0)
    model.train()
    expected = model(input_ids=ids, labels=labels)
    report = apply_liger_kernel(model)
    assert modeling.apply_rotary_pos_emb is not rotary and "forward" in vars(model)
    patched = model(input_ids=ids, labels=labels)
    assert patched.logits is None  # the fused loss ran
    report.revert()
    assert modeling.apply_rotary_pos_emb is rotary and "forward" not in vars(model)
    assert classes == [type(m) for m in model.modules()]
    assert all(p is params[n] for n, p in model.named_parameters())
    got = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)


def test_flags_and_logging(monkeypatch, caplog):
    hide(monkeypatch, "qwen2")
    model = build("qwen2", torch.float32)
    with caplog.at_level(logging.INFO, logger="liger_kernel"):
        report = apply_liger_kernel(model, rope=False, swiglu=False, fused_linear_cross_entropy=False, foo=1)
    assert not kinds(report, "forward") and not kinds(report, "kernel") and len(kinds(report, "RMSNorm")) == 5
    assert sum("swiglu=False" in line for line in report.left) == 2
    assert "foo" in caplog.text and "left stock" in caplog.text
    report.revert()
    with pytest.raises(ValueError, match="cannot both be True"):
        apply_liger_kernel(model, cross_entropy=True)
    with pytest.raises(TypeError, match="True or False"):
        apply_liger_kernel(model, rope="yes")
    report = apply_liger_kernel(model, cross_entropy=True, fused_linear_cross_entropy=False, rope=False)
    assert len(kinds(report, "cross-entropy on the logits")) == 1, str(report)
    report.revert()
    assert "_loss_function" not in vars(model)
