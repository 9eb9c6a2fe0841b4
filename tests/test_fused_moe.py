"""Fused experts block (``ops/fused_moe.py``): output and every gradient against a float64
reference, both weight layouts (Qwen3-MoE / Mixtral's, GPT-OSS's with biases and clamped gating),
skewed routing, and ``LigerExperts`` against transformers' own experts modules."""

import pytest
import torch

from liger_kernel.ops import fused_moe
from liger_kernel.ops.fused_moe import LigerFusedMoEFunction, fused_moe_reference
from liger_kernel.transformers.swiglu import LigerExperts
from tests.parity import DEVICE, FLOOR, as64, assert_matches, randn, sizes

# (tokens, hidden, intermediate, experts): odd, and past the interpreter's 16-row tiles and 16-wide
# blocks, so experts span several tiles and every block edge is masked.
T, H, INTER, E = sizes((37, 24, 20, 5), (1031, 264, 200, 16))
GPT_OSS = {"is_transposed": True, "is_concatenated": False, "alpha": 1.702, "limit": 1.5}


def _routing(top_k, skewed, sentinel=False):
    """(top_k_index, top_k_weights) from random logits; skewed: expert 1 takes nearly every token
    and expert 3 none; sentinel: a few pairs routed to E (transformers' "no expert here")."""
    logits = torch.randn(T, E, device=DEVICE)
    if skewed:
        logits[:, 1] += 4.0
        logits[:, 3] -= 100.0
    weights, index = logits.softmax(-1).topk(top_k, dim=-1)
    if sentinel:
        index[::7, -1] = E
    return index, weights


def _inputs(layout, dtype, top_k, skewed, sentinel=False):
    if layout == "gpt_oss":
        gate_up, down = randn(E, H, 2 * INTER, scale=0.3), randn(E, INTER, H, scale=0.3)
        biases = [randn(E, 2 * INTER, scale=0.5), randn(E, H, scale=0.5)]
    else:
        gate_up, down = randn(E, 2 * INTER, H, scale=0.3), randn(E, H, INTER, scale=0.3)
        biases = [None, None]
    index, weights = _routing(top_k, skewed, sentinel)
    tensors = [randn(T, H), gate_up, down, weights, *biases]
    return [None if t is None else t.to(dtype).requires_grad_() for t in tensors], index


def _run(fn, tensors, index, options, dy):
    x, gate_up, down, weights, gate_up_bias, down_bias = tensors
    y = fn(x, gate_up, down, index, weights, gate_up_bias, down_bias, *options)
    return y, torch.autograd.grad(y, [t for t in tensors if t is not None], dy.to(y.dtype))


@pytest.mark.parametrize(
    "layout, dtype, top_k, skewed, sentinel",
    [
        ("qwen", torch.float32, 3, True, True),  # one expert takes most tokens, one none, some pairs nowhere
        ("qwen", torch.bfloat16, 1, False, False),  # top-1: written straight to the output
        ("gpt_oss", torch.float32, 2, True, False),  # biases, clamped gating, transposed interleaved weights
        ("gpt_oss", torch.bfloat16, 4, False, False),
    ],
)
def test_fused_moe_matches_reference(layout, dtype, top_k, skewed, sentinel):
    _check_against_reference(layout, dtype, top_k, skewed, sentinel)


@pytest.mark.parametrize("layout", ["qwen", "gpt_oss"])
def test_fused_down_backward_matches_reference(layout, monkeypatch):
    """The down backward in one kernel (``SPLIT_DOWN_BACKWARD = False``), kept to compare on the GPU."""
    monkeypatch.setattr(fused_moe, "SPLIT_DOWN_BACKWARD", False)
    _check_against_reference(layout, torch.float32, 2, True, layout == "qwen")


def _check_against_reference(layout, dtype, top_k, skewed, sentinel):
    torch.manual_seed(0)
    dy = randn(T, H)
    options = tuple(GPT_OSS.values()) if layout == "gpt_oss" else (False, True, None, None)
    tensors, index = _inputs(layout, dtype, top_k, skewed, sentinel)
    if layout == "gpt_oss":  # clamps active: some gate/up values past the limit on both sides
        assert (tensors[0].detach().float() @ tensors[1].detach().float()[0]).abs().max() > GPT_OSS["limit"]
    y, grads = _run(LigerFusedMoEFunction.apply, tensors, index, options, dy)
    y64, grads64 = _run(fused_moe_reference, as64(*tensors), index, options, dy)
    same_dtype = [None if t is None else t.detach().requires_grad_() for t in tensors]
    y_same, grads_same = _run(fused_moe_reference, same_dtype, index, options, dy)
    names = ["x", "gate_up_proj", "down_proj", "top_k_weights", "gate_up_proj_bias", "down_proj_bias"]
    names = [n for n, t in zip(names, tensors) if t is not None]
    assert_matches("y", y, y64, y_same)
    for name, g, g64, g_same in zip(names, grads, grads64, grads_same):
        assert_matches(f"d {name}", g, g64, g_same)


def test_fused_moe_inputs_named_in_errors():
    tensors, index = _inputs("qwen", torch.float32, 2, False)
    x, gate_up, down, weights, _, _ = tensors
    with pytest.raises(TypeError, match="top_k_index"):
        LigerFusedMoEFunction.apply(x, gate_up, down, index.float(), weights)
    with pytest.raises(ValueError, match="top_k_index"):
        LigerFusedMoEFunction.apply(x, gate_up, down, index[:, :1], weights)
    with pytest.raises(ValueError, match="Shapes disagree"):
        LigerFusedMoEFunction.apply(x, gate_up, down.transpose(1, 2), index, weights)
    with pytest.raises(ValueError, match="alpha"):
        LigerFusedMoEFunction.apply(x, gate_up, down, index, weights, None, None, False, True, 1.0, None)
    if DEVICE == "cpu":  # on a GPU the check is a device-side assert, which ends the CUDA context
        with pytest.raises(RuntimeError, match="top_k_index"):
            LigerFusedMoEFunction.apply(x, gate_up, down, index + E, weights)


def _hf_experts(family):
    """(transformers' experts module in eager mode, its config) with tiny random weights."""
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts as Experts

        config = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=INTER, num_experts=E, num_experts_per_tok=2)
    else:
        from transformers import GptOssConfig
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts as Experts

        config = GptOssConfig(hidden_size=H, intermediate_size=INTER, num_local_experts=E, num_experts_per_tok=2)
    config._experts_implementation = "eager"
    experts = Experts(config).to(DEVICE)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return experts, config


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_liger_experts_matches_transformers(family):
    torch.manual_seed(0)
    hf, config = _hf_experts(family)
    ours = LigerExperts(config).to(DEVICE)
    ours.load_state_dict(hf.state_dict())  # same names and shapes: checkpoints load unchanged
    assert (ours.alpha, ours.limit) == ((hf.alpha, hf.limit) if family == "gpt_oss" else (None, None))
    index, weights = _routing(2, skewed=True)
    x = randn(T, H, requires_grad=True)
    outputs, grads = [], []
    for module in (ours, hf):
        y = module(x, index, weights)
        dy = torch.ones_like(y)
        grads.append(torch.autograd.grad(y, [x, *module.parameters()], dy))
        outputs.append(y)
    y64 = fused_moe_reference(
        x.double(), *[p.double() for p in (ours.gate_up_proj, ours.down_proj)], index, weights.double(),
        *[None if p is None else p.double() for p in (ours.gate_up_proj_bias, ours.down_proj_bias)],
        ours.is_transposed, not ours.is_transposed, ours.alpha, ours.limit,
    )  # fmt: skip
    assert_matches("y vs float64", outputs[0], y64, outputs[1])
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, g, g_hf in zip(names, *grads):
        assert_matches(f"d {name} vs transformers", g, g_hf.detach().double(), floor=1e-5)


def test_liger_experts_reads_gpt_oss_configs_without_swiglu_fields():
    """transformers 5.17's GptOssConfig has no swiglu_alpha / swiglu_limit (its experts hard-code 1.702
    and 7.0): the model type alone must select GPT-OSS's layout and gating."""
    import types

    config = types.SimpleNamespace(
        model_type="gpt_oss", hidden_size=H, intermediate_size=INTER, num_local_experts=E, hidden_act="silu"
    )
    experts = LigerExperts(config)
    assert (experts.alpha, experts.limit) == (1.702, 7.0)
    assert dict((n, tuple(p.shape)) for n, p in experts.named_parameters()) == {
        "gate_up_proj": (E, H, 2 * INTER),
        "gate_up_proj_bias": (E, 2 * INTER),
        "down_proj": (E, INTER, H),
        "down_proj_bias": (E, H),
    }


def test_fused_moe_second_backward_raises():
    """The backward writes its gradient over the saved pre-activation: a second backward through the
    same graph (retain_graph=True) must fail clearly, not return wrong gradients."""
    tensors, index = _inputs("qwen", torch.float32, 2, False)
    y = LigerFusedMoEFunction.apply(*tensors[:3], index, tensors[3])
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        y.sum().backward()


def test_liger_experts_under_autocast():
    """Mixed precision keeps fp32 weights and computes in the autocast dtype (as F.linear does there):
    the experts cast their inputs instead of rejecting the dtype mismatch (the state the kernels run
    in: test_fused_moe_kernels_run_outside_autocast)."""
    torch.manual_seed(0)
    hf, config = _hf_experts("qwen3_moe")
    ours = LigerExperts(config).to(DEVICE)
    ours.load_state_dict(hf.state_dict())
    index, weights = _routing(2, skewed=False)
    x = randn(T, H, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = ours(x, index, weights)
    assert y.dtype == torch.bfloat16
    y.backward(torch.ones_like(y))
    assert ours.gate_up_proj.grad.dtype == torch.float32
    exact, bf16 = (
        as64(x, hf.gate_up_proj, hf.down_proj),
        [t.detach().bfloat16().requires_grad_() for t in (x, hf.gate_up_proj, hf.down_proj)],
    )
    y64, y_bf16 = (fused_moe_reference(*t, index, weights.to(t[0].dtype)) for t in (exact, bf16))
    grads64 = torch.autograd.grad(y64, exact, torch.ones_like(y64))
    grads_bf16 = torch.autograd.grad(y_bf16, bf16, torch.ones_like(y_bf16))
    got = (y, x.grad, ours.gate_up_proj.grad, ours.down_proj.grad)
    for name, a, r, b in zip(("y", "dx", "d gate_up_proj", "d down_proj"), got, (y64, *grads64), (y_bf16, *grads_bf16)):
        assert_matches(f"{name} under autocast", a, r, b, floor=FLOOR[torch.bfloat16])  # computed in bf16


def test_fused_moe_kernels_run_outside_autocast(monkeypatch):
    """CUDA's autocast runs ``sum`` in fp32: the top-k sum of the pairs' outputs made y fp32 there, and
    its fp32 gradient met bf16 weights in the backward's first GEMM (a Triton compile error on the
    H200, test_liger_experts_under_autocast). The kernels' host code runs with autocast off (checked
    by its state at each launch: CPU autocast keeps that sum in bf16)."""
    seen = []

    def spy(original):
        def run(*args, **kwargs):
            seen.append(torch.is_autocast_enabled(DEVICE))
            return original(*args, **kwargs)

        return run

    for name in ("fused_moe_forward", "fused_moe_backward"):
        monkeypatch.setattr(fused_moe, name, spy(getattr(fused_moe, name)))
    tensors, index = _inputs("qwen", torch.bfloat16, 2, False)
    x, gate_up, down, weights, _, _ = tensors
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = LigerFusedMoEFunction.apply(x, gate_up, down, index, weights)
        y.backward(torch.ones_like(y))
    assert seen == [False, False] and y.dtype == torch.bfloat16
