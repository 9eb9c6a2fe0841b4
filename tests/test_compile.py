"""torch.compile: every op, and a patched model, compile and give the eager results (each op runs
eagerly inside the compiled graph, as one graph break: ``LigerFunction``)."""

from types import SimpleNamespace

import pytest
import torch
from parity import DEVICE, randn

from liger_kernel.transformers import (
    LigerCrossEntropyLoss,
    LigerFusedLinearCrossEntropyLoss,
    LigerGEGLUMLP,
    LigerLayerNorm,
    LigerRMSNorm,
    LigerSwiGLUMLP,
)
from liger_kernel.transformers.functional import liger_geglu, liger_rope, liger_swiglu

H, V = 48, 101
MLP_CONFIG = SimpleNamespace(hidden_size=H, intermediate_size=72, hidden_act="silu")
GEGLU_CONFIG = SimpleNamespace(hidden_size=H, intermediate_size=72, hidden_act="gelu_pytorch_tanh")


def _rope_sum(x):
    q = x[:, : 4 * 8].reshape(1, 4, x.shape[0], 8)
    k = x[:, 4 * 8 : 5 * 8].reshape(1, 1, x.shape[0], 8)
    cos, sin = torch.ones(1, x.shape[0], 8, device=x.device) * 0.6, torch.ones(1, x.shape[0], 8, device=x.device) * 0.8
    return sum((t * t).sum() for t in liger_rope(q, k, cos, sin))


def cases():
    torch.manual_seed(0)
    lm_head = randn(V, H, requires_grad=True)
    target = torch.randint(0, V, (7,), device=DEVICE)
    modules = {
        "rms_norm": LigerRMSNorm(H).to(DEVICE),
        "layer_norm": LigerLayerNorm(H).to(DEVICE),
        "swiglu_mlp": LigerSwiGLUMLP(MLP_CONFIG).to(DEVICE),
        "geglu_mlp": LigerGEGLUMLP(GEGLU_CONFIG).to(DEVICE),
    }
    return {
        **{name: (lambda x, m=m: (m(x) ** 2).sum()) for name, m in modules.items()},
        "swiglu": lambda x: (liger_swiglu(x, x.flip(1)) ** 2).sum(),
        "geglu": lambda x: (liger_geglu(x, x.flip(1)) ** 2).sum(),
        "rope": _rope_sum,
        "cross_entropy": lambda x: LigerCrossEntropyLoss()(x @ lm_head.T, target),
        "fused_linear_cross_entropy": lambda x: LigerFusedLinearCrossEntropyLoss()(lm_head, x, target),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_op_under_compile_matches_eager(name):
    fn = cases()[name]
    x = randn(7, H, requires_grad=True)
    eager = fn(x)
    (eager_grad,) = torch.autograd.grad(eager, [x])
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=False)(x)
    (compiled_grad,) = torch.autograd.grad(compiled, [x])
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_patched_model_under_compile():
    transformers = pytest.importorskip("transformers")
    from liger_kernel.transformers import apply_liger_kernel_to_llama, revert_liger_kernel_to_llama

    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=97,
    )  # fmt: skip
    ids = torch.randint(0, 97, (2, 9), device=DEVICE)
    apply_liger_kernel_to_llama()
    try:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).to(DEVICE)
        eager = model(input_ids=ids, labels=ids).loss
        compiled = torch.compile(model, backend="aot_eager")(input_ids=ids, labels=ids).loss
        compiled.backward()
    finally:
        revert_liger_kernel_to_llama()
    torch.testing.assert_close(compiled, eager)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_under_compile_and_no_grad():
    """Evaluation (``torch.no_grad()``) through a compiled fused loss: the loss alone, as eager."""
    torch.manual_seed(0)
    lm_head, x = randn(V, H, requires_grad=True), randn(7, H, requires_grad=True)
    target = torch.randint(0, V, (7,), device=DEVICE)
    fn = lambda x: LigerFusedLinearCrossEntropyLoss()(lm_head, x, target)  # noqa: E731
    with torch.no_grad():
        eager = fn(x)
        compiled = torch.compile(fn, backend="aot_eager")(x)
    assert not compiled.requires_grad
    torch.testing.assert_close(compiled, eager)
