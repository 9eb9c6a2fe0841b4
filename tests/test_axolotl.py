"""Axolotl 0.21's Liger plugin, run as Axolotl runs it (``LigerPlugin().pre_model_load(cfg)``), on
tiny random models: ``liger_use_token_scaling`` must turn the loss into the DFT loss (each token's
cross-entropy times its detached p[y]), through our patched Llama forward and through Axolotl's own
generic fused-loss forward (olmo, qwen2_moe), which imports ``liger_kernel.transformers.fsdp``.

CI installs ``axolotl==0.21.0`` with ``--no-deps`` (scripts/setup.sh). Two imports on the plugin's
path belong to features this test does not touch and need packages left out (pandas, datasets,
evaluate, wandb): trl's ORPO trainer, which the plugin re-exports for Liger's ORPO trainer, and the
``axolotl.utils.callbacks`` package around the one helper the generic path uses. Where they do not
import, the test stands in for them (see ``light_axolotl``)."""

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
liger_plugin = pytest.importorskip(
    "axolotl.integrations.liger",
    reason="axolotl is not installed: scripts/setup.sh installs axolotl==0.21.0 --no-deps and addict",
)
from axolotl.utils.dict import DictDefault  # noqa: E402
from test_monkey_patch import tiny_config  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from liger_kernel.transformers import functional, monkey_patch  # noqa: E402
from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss  # noqa: E402


def _imports(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


@pytest.fixture
def light_axolotl(monkeypatch):
    """Undo everything the plugin patches after the test, and stand in for the two heavy imports
    on its path where they fail: ``trl.experimental.orpo.ORPOTrainer`` (the plugin only copies it
    to ``trl.trainer``) and the ``axolotl.utils.callbacks`` package (an empty package over the real
    directory, so ``axolotl.utils.callbacks.models`` is the real module)."""
    monkeypatch.setattr(functional, "liger_fused_linear_cross_entropy", functional.liger_fused_linear_cross_entropy)
    monkeypatch.setattr(LigerFusedLinearCrossEntropyLoss, "__init__", LigerFusedLinearCrossEntropyLoss.__init__)
    if not _imports("trl.experimental.orpo"):
        for name in ("trl", "trl.trainer", "trl.experimental", "trl.experimental.orpo"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules["trl"].trainer = sys.modules["trl.trainer"]
        sys.modules["trl.experimental.orpo"].ORPOTrainer = type("ORPOTrainer", (), {})
    else:
        trainer = sys.modules["trl.trainer"]
        monkeypatch.setattr(trainer, "ORPOTrainer", getattr(trainer, "ORPOTrainer", None), raising=False)
    if not _imports("axolotl.utils.callbacks"):
        package = types.ModuleType("axolotl.utils.callbacks")
        package.__path__ = [str(Path(importlib.import_module("axolotl.utils").__file__).parent / "callbacks")]
        monkeypatch.setitem(sys.modules, "axolotl.utils.callbacks", package)
        monkeypatch.delitem(sys.modules, "axolotl.utils.callbacks.models", raising=False)
        monkeypatch.delitem(sys.modules, "axolotl.integrations.liger.models.base", raising=False)
    yield
    for family in monkey_patch.MODEL_SPECS:
        getattr(monkey_patch, f"revert_liger_kernel_to_{family}")()


def run_plugin(model_type, **options):
    cfg = DictDefault({"model_config_type": model_type, **options})
    liger_plugin.LigerPlugin().pre_model_load(cfg)


def tiny_model(model_type):
    moe = {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16} if "moe" in model_type else {}
    config = tiny_config(model_type, tie_word_embeddings=False, **moe)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).train()


def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 9), generator=generator)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt the loss ignores
    return ids, labels


def reference(stock, ids, labels, token_scaling):
    """Loss and lm_head gradient in plain PyTorch, float64 from the stock decoder's last hidden
    states on: the mean over non-ignored tokens of nll, or of nll * p[y].detach() (DFT)."""
    with torch.no_grad():
        hidden = stock.model(input_ids=ids).last_hidden_state.double()
    weight = stock.lm_head.weight.detach().double().requires_grad_()
    target = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    nll = F.cross_entropy((hidden @ weight.T).reshape(target.numel(), -1), target, reduction="none")  # 0 if ignored
    per_token = nll * torch.exp(-nll).detach() if token_scaling else nll
    loss = per_token.sum() / (target != -100).sum()
    loss.backward()
    return loss, weight.grad


def assert_matches(model, expected):
    ids, labels = batch()
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None  # the fused loss ran
    out.loss.backward()
    expected_loss, expected_grad = expected
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.double(), expected_loss, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(model.lm_head.weight.grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_token_scaling_reaches_the_patched_llama_forward(light_axolotl):
    stock = tiny_model("llama")
    plain, scaled = (reference(stock, *batch(), token_scaling) for token_scaling in (False, True))
    assert scaled[0] < plain[0]  # each token's loss is multiplied by its p[y] < 1
    flags = dict(liger_fused_linear_cross_entropy=True, liger_rms_norm=True, liger_glu_activation=True)
    run_plugin("llama", **flags)
    assert_matches(tiny_model("llama"), plain)
    run_plugin("llama", liger_use_token_scaling=True, **flags)
    assert_matches(tiny_model("llama"), scaled)


@pytest.mark.parametrize("model_type", ["olmo", "qwen2_moe"])
def test_token_scaling_through_axolotls_generic_forward(light_axolotl, model_type):
    """Model types outside our table get Axolotl's own fused-loss forward (models/base.py), which
    calls our LigerForCausalLMLoss and imports our fsdp module."""
    stock = tiny_model(model_type)
    expected = reference(stock, *batch(), token_scaling=True)
    model_class = type(stock)
    original_forward = model_class.__dict__["forward"]
    run_plugin(model_type, liger_fused_linear_cross_entropy=True, liger_use_token_scaling=True)
    try:
        from axolotl.integrations.liger.models.base import lce_forward

        assert model_class.forward is lce_forward
        assert_matches(tiny_model(model_type), expected)
    finally:
        model_class.forward = original_forward
