"""LigerFusedLinearGRPOLoss (chunked_loss.grpo_loss, one-pass fused head of ops/fused_linear_ppo.py):
loss, metrics and the gradients of input, weight and bias against float64 references, for every
loss type, both importance-sampling levels and the options; the metric conventions against TRL's
own loss (tests/trl_grpo.py, a port of trl 1.16's GRPOTrainer._compute_loss)."""

import pytest
import torch
from parity import DEVICE, FLOOR, assert_matches, sizes
from trl_grpo import rollout_batch, trl_grpo_loss

import liger_kernel.ops.fused_linear_logprobs as flp
import liger_kernel.ops.fused_linear_ppo as engine
from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
from liger_kernel.chunked_loss.functional import liger_fused_linear_grpo
from liger_kernel.chunked_loss.fused_linear_ppo import LigerFusedLinearPPOBase
from liger_kernel.chunked_loss.grpo_loss import (
    LigerFusedLinearGRPOFunction,
    clip_coef_fn,
    get_gamma_weights,
    k3_loss_fn,
    sapo_loss_fn,
)
from liger_kernel.ops.fused_linear_logprobs import fused_linear_logprobs_reference

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo"]
B, T, H, V = sizes((3, 7, 16, 45), (8, 256, 512, 4099))  # odd: not a block multiple
MAX_LEN = T + 2


def make_batch(dtype, seed=0, bias=True):
    """Hidden states, head, ids and the rest of a GRPO batch (``rollout_batch``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(B, T, H, generator=g)).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5 * 2).to(DEVICE, dtype).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_() if bias else None
    ids = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    with torch.no_grad():
        b64 = None if b is None else b.double()
        logp = fused_linear_logprobs_reference(x.double().view(-1, H), w.double(), ids.view(-1), b64).view(B, T)
    mask, adv, old, ref = rollout_batch(logp, g, DEVICE)
    return x, w, b, ids, mask, adv, old, ref


def textbook_logps(x, w, b, ids, temperature):
    """float64 ``log_softmax((x W^T + b) / temperature)`` at ``ids``, differentiable."""
    logits = torch.nn.functional.linear(x, w, b) / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def options_for(loss_type, **kw):
    opts = dict(loss_type=loss_type, max_completion_length=MAX_LEN)
    if loss_type == "cispo":
        opts.update(epsilon_high=1.1)  # cispo's cap is on the ratio itself (TRL uses ~5): mixed clipping here
    opts.update(kw)
    return opts


def run_ours(x, w, b, ids, mask, adv, old, ref, vllm=None, num_items=None, **opts):
    loss, metrics = LigerFusedLinearGRPOLoss(**opts)(
        x, w, ids, mask, adv, b, ref, old, vllm_is_ratio=vllm, num_items_in_batch=num_items
    )
    grads = torch.autograd.grad(loss, [t for t in (x, w, b) if t is not None])
    return loss, metrics, grads


def run_reference(x, w, b, ids, mask, adv, old, ref, vllm=None, num_items=None, temperature=1.0, **opts):
    """TRL's loss on float64 textbook log-probs, and its float64 gradients."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    logp = textbook_logps(*leaves, ids, temperature)
    trl_opts = {k: v for k, v in opts.items() if k not in ("temperature",)}
    loss, kl, clip = trl_grpo_loss(
        logp, None if old is None else old.double(), None if ref is None else ref.double(), adv.double(), mask,
        importance_sampling_ratio=None if vllm is None else vllm.double(), num_items_in_batch=num_items, **trl_opts,
    )  # fmt: skip
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return loss, kl, clip, grads


def check(dtype, vllm=None, num_items=None, temperature=1.0, seed=0, bias=True, **opts):
    x, w, b, ids, mask, adv, old, ref = make_batch(dtype, seed, bias)
    if vllm is not None and vllm.shape == mask.shape:
        vllm = torch.where(mask.bool(), vllm, 1.0)  # TRL's ratio is 1 on padding
    loss, metrics, grads = run_ours(x, w, b, ids, mask, adv, old, ref, vllm, num_items, temperature=temperature, **opts)
    ref_loss, kl, clip, ref_grads = run_reference(
        x, w, b, ids, mask, adv, old, ref, vllm, num_items, temperature=temperature, **opts
    )
    # The same-dtype PyTorch path (logits in the input dtype, as TRL's model computes them) is
    # the yardstick of the error.
    base_leaves = [None if t is None else t.detach().requires_grad_() for t in (x, w, b)]
    base_logp = fused_linear_logprobs_reference(
        base_leaves[0].view(-1, H), base_leaves[1], ids.view(-1), base_leaves[2], temperature
    ).view(B, T)
    trl_opts = {k: v for k, v in opts.items() if k != "temperature"}
    base_loss, _, _ = trl_grpo_loss(
        base_logp, old, ref, adv.float(), mask, importance_sampling_ratio=vllm, num_items_in_batch=num_items, **trl_opts
    )
    base_grads = torch.autograd.grad(base_loss, [t for t in base_leaves if t is not None])
    assert loss.dtype == torch.float32
    # factor 4: a sum of signed terms, ill-conditioned for vespo (d log phi / d log w = k - lambda w)
    assert_matches("loss", loss, ref_loss, base_loss, factor=4.0, floor=FLOOR[dtype] * 4)
    for name, g, r, bg in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads, base_grads):
        assert g.dtype == dtype
        assert_matches(name, g, r, bg, factor=2.0)
    beta = opts.get("beta", 0.04)
    assert len(metrics) == (2 if beta != 0.0 else 1)
    if beta != 0.0:
        assert_matches("kl", metrics[0], kl, base_loss * 0, floor=FLOOR[dtype] * 4)
    expected_clip = torch.zeros((), dtype=torch.float64) if clip is None else clip
    # clip decisions at a ratio boundary may flip with rounding: within one token of the masked count
    assert abs(metrics[-1].item() - expected_clip.item()) <= 1.0 / max(mask.sum().item(), 1) + 1e-6


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_types(loss_type, level, dtype):
    check(dtype, **options_for(loss_type, importance_sampling_level=level))


@pytest.mark.parametrize(
    "extra",
    [
        dict(beta=0.0),
        dict(delta=1.5),
        dict(use_bias_correction_kl=True),
        dict(temperature=0.7),
        dict(epsilon_low=0.1, epsilon_high=0.28),
        dict(num_items=23),
        dict(vllm="token"),
        dict(vllm="sequence"),
        dict(bias=False),
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo", "sapo", "vespo", "luspo"])
def test_options(loss_type, extra):
    extra = dict(extra)
    vllm = extra.pop("vllm", None)
    if vllm is not None:
        g = torch.Generator(device="cpu").manual_seed(3)
        shape = (B, T) if vllm == "token" else (B, 1)
        vllm = (torch.rand(*shape, generator=g) * 0.4 + 0.8).to(DEVICE)
    check(torch.float32, vllm=vllm, **options_for(loss_type, **extra))


def test_chunks_of_one_sequence(monkeypatch):
    """Every sequence in its own chunk: the whole-batch normalizers make the chunks add up."""
    monkeypatch.setattr(engine, "ROWS_BUDGET_BYTES", T * V * 4)
    calls = []
    mm_fp32 = flp.mm_fp32
    monkeypatch.setattr(flp, "mm_fp32", lambda a, b, out: calls.append(a.shape[0]) or mm_fp32(a, b, out))
    for loss_type in ("grpo", "dapo", "vespo"):
        check(torch.float32, **options_for(loss_type, importance_sampling_level="sequence"))
    assert set(calls) == {T}


def test_reference_model_head():
    """beta != 0 without ref log-probs: computed without grad from ref_input and ref_weight."""
    x, w, b, ids, mask, adv, old, _ = make_batch(torch.float32)
    ref_x = (x.detach() * 0.9).requires_grad_(False)
    ref_w = w.detach() + 0.01 * torch.randn_like(w)
    loss_fn = LigerFusedLinearGRPOLoss(beta=0.04, use_ref_model=True, temperature=0.8)
    loss, metrics = loss_fn(x, w, ids, mask, adv, b, None, old, ref_input=ref_x, ref_weight=ref_w, ref_bias=None)
    ref_logp = textbook_logps(ref_x.double(), ref_w.double(), None, ids, 0.8).float()
    loss2, metrics2 = loss_fn(x, w, ids, mask, adv, b, ref_logp, old)
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics[0], metrics2[0], rtol=1e-4, atol=1e-6)


def test_masked_tokens_never_contribute():
    """Non-finite old/ref log-probs and vLLM ratios outside the mask change nothing; an
    all-masked batch gives a zero loss, zero metrics and zero gradients."""
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    outside = ~mask.bool()
    vllm = torch.ones(B, T, device=DEVICE)
    loss, metrics, grads = run_ours(x, w, b, ids, mask, adv, old, ref, vllm, loss_type="grpo")
    bad = lambda t, v: torch.where(outside, torch.full_like(t, v), t)  # noqa: E731
    ids_bad = torch.where(outside, torch.full_like(ids, V + 5), ids)  # out-of-range ids under the mask too
    loss2, metrics2, grads2 = run_ours(
        x, w, b, ids_bad, mask, adv, bad(old, float("nan")), bad(ref, -float("inf")), bad(vllm, float("nan")),
        loss_type="grpo",
    )  # fmt: skip
    torch.testing.assert_close(loss, loss2)
    for a, c in zip((*metrics, *grads), (*metrics2, *grads2)):
        torch.testing.assert_close(a, c)
    zero_mask = torch.zeros_like(mask)
    for loss_type in ("grpo", "bnpo", "dapo", "luspo"):
        loss, metrics, grads = run_ours(x, w, b, ids, zero_mask, adv, old, ref, loss_type=loss_type)
        assert loss.item() == 0.0 and all(m.item() == 0.0 for m in metrics)
        assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_function_alias_and_no_grad():
    """The functional alias takes the Function's positional arguments; under no_grad only the
    loss is computed; a 2-D input works like the 3-D one."""
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    assert liger_fused_linear_grpo == LigerFusedLinearGRPOFunction.apply
    loss, metrics = liger_fused_linear_grpo(x, w, ids, mask, adv, b, ref, old)
    module_loss, _ = LigerFusedLinearGRPOLoss()(x, w, ids, mask, adv, b, ref, old)
    torch.testing.assert_close(loss, module_loss)
    with torch.no_grad():
        loss_ng, _ = LigerFusedLinearGRPOLoss()(x.view(B * T, H), w, ids, mask, adv, b, ref, old)
    assert not loss_ng.requires_grad
    torch.testing.assert_close(loss_ng, loss.detach())
    assert issubclass(LigerFusedLinearGRPOFunction, LigerFusedLinearPPOBase)
    assert LigerFusedLinearPPOBase._compute_dapo_normalizer(mask).item() == mask.sum().item()
    assert LigerFusedLinearPPOBase._compute_dapo_normalizer(mask, 40).item() == 40.0


def test_helpers():
    lp, lq = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(k3_loss_fn(lp, lq), torch.exp(lp - lq) - (lp - lq) - 1)
    coef = torch.tensor([0.5, 0.9, 1.0, 1.3, 6.0])
    clipped, low, high = clip_coef_fn(coef, 0.2, 0.2, "grpo")
    torch.testing.assert_close(clipped, torch.tensor([0.8, 0.9, 1.0, 1.2, 1.2]))
    assert low.tolist() == [True, False, False, False, False] and high.tolist() == [False] * 3 + [True, True]
    clipped, _, high = clip_coef_fn(coef, 0.2, 5.0, "cispo")
    assert clipped[-1].item() == 5.0 and high.tolist() == [False] * 4 + [True]
    assert sapo_loss_fn(torch.tensor(1.0), 1.05).item() == pytest.approx(2 / 1.05)
    adv = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    lr = torch.randn(2, 4, dtype=torch.float64) * 0.1
    m = torch.ones(2, 4, dtype=torch.float64)
    from trl_grpo import trl_get_gamma_weights

    torch.testing.assert_close(
        get_gamma_weights(adv, lr, m), trl_get_gamma_weights(adv, lr, m, None, 2.0, 3.0, 3.0, 2.0)
    )


def test_errors_name_the_argument():
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    with pytest.raises(ValueError, match="max_completion_length"):
        LigerFusedLinearGRPOLoss(loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        LigerFusedLinearGRPOLoss(loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        LigerFusedLinearGRPOLoss(importance_sampling_level="chunk")
    with pytest.raises(ValueError, match="ref_per_token_logps"):
        LigerFusedLinearGRPOLoss(beta=0.04)(x, w, ids, mask, adv, b, None, old)
    with pytest.raises(ValueError, match="attention_mask"):
        LigerFusedLinearGRPOLoss()(x, w, ids, mask[:, :-1], adv, b, ref, old)
    with pytest.raises(ValueError, match="selected_token_ids"):
        LigerFusedLinearGRPOLoss()(x, w, torch.full_like(ids, V), mask, adv, b, ref, old)


def test_upstream_gradient_scales():
    """TRL divides the loss by the accumulation steps: the saved gradients follow any upstream
    factor (scaled in place in backward)."""
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    loss, _, grads = run_ours(x, w, b, ids, mask, adv, old, ref, loss_type="dapo")
    loss3, _ = LigerFusedLinearGRPOLoss()(x, w, ids, mask, adv, b, ref, old)
    grads3 = torch.autograd.grad(loss3 / 3, (x, w, b))
    for g, g3 in zip(grads, grads3):
        torch.testing.assert_close(g3, g / 3)


def test_trl_call_and_torch_impl(monkeypatch):
    """The call TRL 0.24-1.x makes (keywords; metrics[0] the KL, metrics[-1] the clip ratio), on
    the kernels and on the PyTorch reference (``LIGER_KERNEL_IMPL=torch``), which agree."""
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    loss_fn = LigerFusedLinearGRPOLoss(
        beta=0.04, epsilon_low=0.2, epsilon_high=0.28, temperature=0.9, use_ref_model=True, loss_type="bnpo",
        max_completion_length=MAX_LEN, importance_sampling_level="sequence",
    )  # fmt: skip
    outputs = []
    for impl in ("triton", "torch"):
        monkeypatch.setenv("LIGER_KERNEL_IMPL", impl)
        loss, metrics = loss_fn(
            _input=x, lin_weight=w, selected_token_ids=ids, attention_mask=mask, advantages=adv, bias=b,
            old_per_token_logps=old, ref_per_token_logps=ref, vllm_is_ratio=None,
        )  # fmt: skip
        outputs.append((loss, metrics[0], metrics[-1], *torch.autograd.grad(loss, (x, w, b))))
    for a, c in zip(*outputs):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_float64_is_the_textbook_loss():
    """float64 inputs run the reference in float64: TRL's loss and gradients to float64 rounding."""
    x, w, b, ids, mask, adv, old, ref = make_batch(torch.float32)
    x, w, b = (t.detach().double().requires_grad_() for t in (x, w, b))
    loss, metrics, grads = run_ours(x, w, b, ids, mask, adv, old, ref, loss_type="grpo")
    ref_loss, kl, _, ref_grads = run_reference(x, w, b, ids, mask, adv, old, ref, loss_type="grpo")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(metrics[0], kl, rtol=1e-12, atol=1e-14)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
