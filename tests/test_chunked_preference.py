"""Paired (DPO, ORPO, CPO, SimPO) and unpaired (KTO) preference losses: loss, every metric and
every gradient against float64 autograd through the textbook formulas, which are TRL 0.24.0's
own (non-Liger) implementations ported below with their file and method (importing TRL needs
its dependencies). Kernels under the interpreter on CPU, small odd shapes, ignored tokens and
all-ignored sequences, fp32 and bf16, both passes (one pass over chunks of pairs / two passes)."""

import math

import pytest
import torch
import torch.nn.functional as F
from parity import DEVICE, FLOOR, as64, assert_matches, randn

from liger_kernel.chunked_loss import (
    LigerFusedLinearCPOLoss,
    LigerFusedLinearDPOLoss,
    LigerFusedLinearKTOLoss,
    LigerFusedLinearORPOLoss,
    LigerFusedLinearSimPOLoss,
)
from liger_kernel.chunked_loss import fused_linear_preference as pref_module
from liger_kernel.chunked_loss import fused_linear_unpaired_preference as unpaired_module
from liger_kernel.chunked_loss.dpo_loss import DPO_LOSS_TYPES
from liger_kernel.chunked_loss.functional import liger_fused_linear_dpo, liger_fused_linear_kto
from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase
from liger_kernel.chunked_loss.fused_linear_unpaired_preference import LigerFusedLinearUnpairedPreferenceBase
from liger_kernel.ops.fused_linear_logprobs import fused_linear_logprobs_reference

N_PAIRS, SEQ, HIDDEN, VOCAB = 2, 5, 8, 37


# ----------------------------------------------------------------------------- TRL 0.24.0's formulas


def trl_dpo_losses(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing, discopop_tau):
    """trl/trainer/dpo_trainer.py, ``DPOTrainer.dpo_loss`` (f_divergence reverse KL); ``bco_pair``
    with its running mean at its first step (the batch's mean reward)."""
    chosen_logratios = chosen - ref_chosen
    rejected_logratios = rejected - ref_rejected
    logits = (chosen - rejected) - (ref_chosen - ref_rejected)
    ls = label_smoothing
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    if loss_type == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    if loss_type == "exo_pair":
        ls = ls or 1e-3
        return (beta * logits).sigmoid() * (F.logsigmoid(beta * logits) - math.log(1 - ls)) + (
            -beta * logits
        ).sigmoid() * (F.logsigmoid(-beta * logits) - math.log(ls))
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type == "bco_pair":
        delta = torch.cat((beta * chosen_logratios, beta * rejected_logratios), 0).mean().detach()
        return -F.logsigmoid((beta * chosen_logratios) - delta) - F.logsigmoid(-(beta * rejected_logratios - delta))
    if loss_type == "sppo_hard":
        return (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    if loss_type == "nca_pair":
        cr, rr = chosen_logratios * beta, rejected_logratios * beta
        return -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "apo_zero":
        return 1 - F.sigmoid(beta * chosen_logratios) + F.sigmoid(beta * rejected_logratios)
    if loss_type == "apo_down":
        return F.sigmoid(beta * chosen_logratios) + 1 - F.sigmoid(beta * (chosen_logratios - rejected_logratios))
    assert loss_type == "discopop"
    logits = logits * beta
    modulation = torch.sigmoid(logits / discopop_tau)
    return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation


def trl_orpo(chosen, rejected, beta):
    """trl/trainer/orpo_trainer.py, ``ORPOTrainer.odds_ratio_loss``: (losses, ratio mean, log_odds mean)."""
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    ratio = F.logsigmoid(log_odds)
    return beta * ratio, ratio.mean(), log_odds.mean()


def trl_cpo(chosen, rejected, beta, label_smoothing, simpo_gamma=None):
    """trl/trainer/cpo_trainer.py, ``CPOTrainer.cpo_loss`` (alpha=0; loss_type sigmoid or simpo)."""
    logits = chosen - rejected
    if simpo_gamma is not None:
        logits = logits - simpo_gamma / beta
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def trl_kto(logps, ref_logps, labels, beta, kl):
    """trl/trainer/kto_trainer.py, ``KTOTrainer.kto_loss`` (loss_type kto, unit weights) in batch order."""
    logratios = logps - ref_logps
    return torch.where(labels, 1 - F.sigmoid(beta * (logratios - kl)), 1 - F.sigmoid(beta * (kl - logratios)))


# ----------------------------------------------------------------------------- references


def seq_logps(x, w, b, y, average):
    tok = fused_linear_logprobs_reference(x.reshape(-1, x.shape[-1]), w, y.reshape(-1), b).view(y.shape)
    total = tok.sum(-1)
    return (total / (y != -100).sum(-1).clamp(min=1) if average else total), tok


def logits_mean(x, w, b, y):
    """TRL's ``logits[loss_mask].mean()`` over the vocabulary too."""
    logits = F.linear(x, w, b)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return logits[y != -100].mean() if (y != -100).any() else logits.new_zeros(())


def paired_reference(kind, x, w, b, y, ref, opts, rel=None):
    """``(loss, metrics)`` in the order the Functions return them; ``rel`` [2, 2B]: relative
    changes of the policy's and the reference's per-sequence log-probs (``head_condition``)."""
    average = opts.get("average_log_prob", kind in ("orpo", "simpo"))
    seq, tok = seq_logps(x, w, b, y, average)
    if rel is not None:
        seq = seq * (1 + rel[0])
    chosen, rejected = seq[:N_PAIRS], seq[N_PAIRS:]
    beta = opts.get("beta", 0.1)
    ls = opts.get("label_smoothing", 0.0)
    nll_target = opts.get("nll_target")
    if nll_target is None:
        nll_tok = tok[:N_PAIRS]
        nll_count = (y[:N_PAIRS] != -100).sum()
    else:
        flat = x[:N_PAIRS].reshape(-1, x.shape[-1])
        nll_tok = fused_linear_logprobs_reference(flat, w, nll_target[:N_PAIRS].reshape(-1), b)
        nll_count = (nll_target[:N_PAIRS] != -100).sum()
    nll = -nll_tok.sum() / nll_count.clamp(min=1)
    aux = ()
    if kind == "dpo":
        if ref is None:
            ref_chosen = ref_rejected = torch.zeros_like(chosen)
        else:
            ref_seq, _ = seq_logps(*[t.detach() if t is not None else None for t in ref], y, average)
            ref_seq = ref_seq if rel is None else ref_seq * (1 + rel[1])
            ref_chosen, ref_rejected = ref_seq[:N_PAIRS], ref_seq[N_PAIRS:]
        losses = trl_dpo_losses(
            chosen, rejected, ref_chosen, ref_rejected, beta, opts.get("loss_type", "sigmoid"), ls,
            opts.get("discopop_tau", 0.05),
        )  # fmt: skip
        aux = (beta * (chosen - ref_chosen), beta * (rejected - ref_rejected))
        compute_nll = opts.get("compute_nll_loss", False)
    elif kind == "orpo":
        losses, ratio_mean, log_odds_mean = trl_orpo(chosen, rejected, beta)
        losses = -losses
        aux = (beta * chosen, beta * rejected, ratio_mean, log_odds_mean)
        compute_nll = opts.get("compute_nll_loss", True)
    else:
        gamma = opts.get("gamma", 0.5) if kind == "simpo" else None
        losses = trl_cpo(chosen, rejected, beta, ls, gamma)
        aux = (beta * chosen, beta * rejected)
        compute_nll = opts.get("compute_nll_loss", True)  # both Modules default to True
    loss = losses.mean()
    if compute_nll:
        loss = loss + opts.get("alpha", 1.0) * nll
    else:
        nll = torch.zeros((), dtype=loss.dtype)
    means = (logits_mean(x[:N_PAIRS], w, b, y[:N_PAIRS]), logits_mean(x[N_PAIRS:], w, b, y[N_PAIRS:]))
    return loss, (chosen, rejected, *means, nll, *aux)


# ----------------------------------------------------------------------------- inputs and runs


def make_inputs(dtype, bias, n_seq=2 * N_PAIRS, all_ignored_seq=True, ref=True):
    x = randn(n_seq, SEQ, HIDDEN, dtype=dtype, requires_grad=True)
    w = randn(VOCAB, HIDDEN, dtype=dtype, requires_grad=True, scale=HIDDEN**-0.5 * 2)
    b = randn(VOCAB, dtype=dtype, requires_grad=True) if bias else None
    y = torch.randint(0, VOCAB, (n_seq, SEQ), device=DEVICE)
    y[torch.rand(n_seq, SEQ, device=DEVICE) < 0.3] = -100
    y[:, 0] = torch.randint(0, VOCAB, (n_seq,), device=DEVICE)  # every sequence has a token ...
    if all_ignored_seq:
        y[n_seq - 1] = -100  # ... but the last (a rejected one)
    refs = None
    if ref:
        refs = (
            x.detach() + 0.3 * randn(n_seq, SEQ, HIDDEN, dtype=dtype),
            w.detach() + 0.3 * randn(VOCAB, HIDDEN, dtype=dtype, scale=HIDDEN**-0.5),
            None if b is None else b.detach() + 0.1 * randn(VOCAB, dtype=dtype),
        )
    return x, w, b, y, refs


def check(name, actual, reference64, baseline, magnitude=None):
    """``actual`` against the float64 result, with the same formula in the input dtype as the
    yardstick; ``magnitude``: the size of the terms a cancelling sum or mean adds up (the floor's
    scale instead of the result's)."""
    floor = FLOOR[actual.dtype]
    if magnitude is not None:
        floor *= magnitude / max(reference64.abs().max().item(), 1e-30)
    assert_matches(name, actual.float(), reference64, None if baseline is None else baseline.float(), floor=floor)


def logits_magnitude(x, w, b, reduce):
    """Mean (or sum) |logit|: the scale of the logits metrics."""
    logits = F.linear(x.detach().double(), w.detach().double(), None if b is None else b.detach().double()).abs()
    return logits.mean().item() if reduce == "mean" else logits.sum().item()


@pytest.fixture(params=["one pass", "two passes", "whole batch"])
def passes(request, monkeypatch):
    """Every route; the one-pass route with one pair (or sequence) per chunk (bco_pair, which
    couples the batch, takes the whole-batch route there); the whole-batch route for every paired
    loss, whatever the batch's size."""
    one = request.param != "two passes"
    monkeypatch.setattr(pref_module, "WHOLE_BATCH_FOR_EVERY_LOSS", request.param == "whole batch")
    monkeypatch.setattr(pref_module, "whole_batch_fits", lambda x, weight: True)  # N > 2H on these shapes
    monkeypatch.setattr(LigerFusedLinearPreferenceBase, "one_pass", one)
    monkeypatch.setattr(LigerFusedLinearUnpairedPreferenceBase, "one_pass", one)
    monkeypatch.setattr(pref_module, "ONE_PASS_BUDGET_BYTES", 1)
    monkeypatch.setattr(unpaired_module, "EXACT_ROWS_BUDGET_BYTES", 1)
    return request.param


def head_condition(reference, n_seq, step=1e-7):
    """For each output of the float64 ``reference(rel) -> outputs``, the largest over its elements of
    ``sum_j |d out / d s_j| |s_j|``: how far it moves when each per-sequence log-prob ``s_j`` (the
    policy's and the reference's) is off by a relative rounding (forward differences, relative
    step ``step``)."""
    base = reference(None)
    total = [torch.zeros_like(o) for o in base]
    for j in range(2 * n_seq):
        rel = torch.zeros(2 * n_seq, dtype=torch.float64, device=DEVICE)
        rel[j] = step
        for t, moved, at in zip(total, reference(rel.view(2, n_seq)), base):
            t += (moved - at).abs() / step
    return [t.max().item() for t in total]


def run_paired(kind, module, dtype, bias, opts, use_ref=False, all_ignored_seq=True):
    """Every output and gradient against float64. The loss and the gradients are functions of the
    per-sequence log-probs s through the loss's head, and each s carries its own rounding (ours and
    PyTorch's alike, a relative ``FLOOR`` of the dtype at most): their floor is the dtype's times
    their own size plus the head's condition (``head_condition``: the sum over s of |d out / d s|
    |s|), not times their size alone. The two differ where the head cancels: IPO's loss (d -
    1/(2 beta))^2, d a difference of four log-probs, is far smaller than those log-probs near d =
    1/(2 beta), and so is its gradient 2 (d - 1/(2 beta)) dd/dx, whose factor's absolute error is
    that of the log-probs. fp32 ipo (average_log_prob, beta=0.5), 200 seeds on CPU
    (scripts/gpu/post12_ipo_seeds.py): the largest error reached 1.60x a floor scaled by the value
    alone (two-pass loss; one pass: loss 1.22x, grad_bias 1.03x; the H200 once 1.09x), at most
    0.046x the conditioned floor on every route."""
    x, w, b, y, refs = make_inputs(dtype, bias, all_ignored_seq=all_ignored_seq, ref=use_ref)
    nll_target = opts.get("nll_target")
    args = (w, x, y, b) + (() if kind != "dpo" else (refs or (None, None, None)))
    loss, metrics = module(*args) if nll_target is None else module(w, x, y, b, nll_target=nll_target)
    upstream = 1.7
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(loss * upstream, leaves)
    x64, w64, b64 = as64(x, w, b)
    ref64 = None if refs is None else [None if t is None else t.double() for t in refs]

    def reference64(rel):
        loss64, metrics64 = paired_reference(kind, x64, w64, b64, y, ref64, opts, rel)
        return loss64, metrics64, torch.autograd.grad(loss64 * upstream, [t for t in (x64, w64, b64) if t is not None])

    def loss_and_grads64(rel):
        loss64, _, grads64 = reference64(rel)
        return loss64, *grads64

    ref_loss, ref_metrics, ref_grads = reference64(None)
    loss_condition, *grad_conditions = head_condition(loss_and_grads64, 2 * N_PAIRS)
    base_loss, base_metrics = paired_reference(kind, x, w, b, y, refs, opts)
    base_grads = torch.autograd.grad(base_loss * upstream, leaves)
    assert len(metrics) == len(ref_metrics)
    check("loss", loss, ref_loss, base_loss, ref_loss.abs().item() + loss_condition)
    # logits means: the logits' size; rewards and the rest: differences of log-probs of that size
    logps_size = max(ref_metrics[0].abs().max().item(), ref_metrics[1].abs().max().item())
    magnitudes = [None, None, *[logits_magnitude(x, w, b, "mean")] * 2] + [logps_size] * (len(ref_metrics) - 4)
    for i, (got, want, plain) in enumerate(zip(metrics, ref_metrics, base_metrics)):
        assert got.shape == want.shape, f"metric {i}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        check(f"metric {i}", got, want, plain, magnitudes[i])
    names = ("grad_input", "grad_weight", "grad_bias")
    for name, got, want, plain, condition in zip(names, grads, ref_grads, base_grads, grad_conditions):
        assert got.dtype == dtype
        check(name, got, want, plain, want.abs().max().item() + condition)


DPO_CASES = [dict(loss_type=t) for t in DPO_LOSS_TYPES] + [
    dict(loss_type="sigmoid", label_smoothing=0.2, average_log_prob=True),
    dict(loss_type="robust", label_smoothing=0.1),
    dict(loss_type="exo_pair", label_smoothing=0.1),
    dict(loss_type="ipo", average_log_prob=True, beta=0.5),
    dict(loss_type="sigmoid", compute_nll_loss=True, alpha=0.7),
    dict(loss_type="discopop", discopop_tau=0.2, beta=0.3),
]


@pytest.mark.parametrize("opts", DPO_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_dpo_fp32(opts, passes):
    if passes == "two passes" and len(opts) == 1 and opts["loss_type"] not in ("sigmoid", "bco_pair"):
        pytest.skip("the head is the same code on both routes: every loss type once, the options on both")
    module = LigerFusedLinearDPOLoss(**opts)
    run_paired("dpo", module, torch.float32, bias=True, opts=opts, use_ref=True)


@pytest.mark.parametrize("loss_type", ["sigmoid", "apo_zero", "bco_pair"])
@pytest.mark.parametrize("bias", [False, True])
def test_dpo_bf16(loss_type, bias, passes):
    opts = dict(loss_type=loss_type, compute_nll_loss=True)
    run_paired("dpo", LigerFusedLinearDPOLoss(**opts), torch.bfloat16, bias, opts, use_ref=True)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sppo_hard"])
def test_dpo_without_reference(loss_type, passes):
    opts = dict(loss_type=loss_type, use_ref_model=False)
    run_paired("dpo", LigerFusedLinearDPOLoss(**opts), torch.float32, True, opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orpo(dtype, passes):
    # ORPO's log(1 - p) is -inf for a sequence without tokens (log-prob 0), in TRL too: none here.
    run_paired("orpo", LigerFusedLinearORPOLoss(beta=0.3), dtype, True, dict(beta=0.3), all_ignored_seq=False)


def test_orpo_nll_target(passes):
    torch.manual_seed(1)
    nll_target = torch.randint(0, VOCAB, (2 * N_PAIRS, SEQ), device=DEVICE)
    nll_target[0, 1:3] = -100
    opts = dict(nll_target=nll_target)
    run_paired("orpo", LigerFusedLinearORPOLoss(), torch.float32, False, opts, all_ignored_seq=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "opts", [dict(), dict(label_smoothing=0.1, alpha=0.5, average_log_prob=True), dict(compute_nll_loss=False)]
)
def test_cpo(dtype, opts, passes):
    run_paired("cpo", LigerFusedLinearCPOLoss(**opts), dtype, True, opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", [dict(), dict(gamma=1.2, beta=2.0, label_smoothing=0.1, compute_nll_loss=False)])
def test_simpo(dtype, opts, passes):
    run_paired("simpo", LigerFusedLinearSimPOLoss(**opts), dtype, False, opts)


def test_functional_dpo_and_reference_gets_no_gradient(passes):
    """The functional alias with every argument positional; the frozen reference head's inputs
    get no gradient even when they require one (TRL computes them under no_grad)."""
    x, w, b, y, (rx, rw, rb) = make_inputs(torch.float32, True)
    rx.requires_grad_()
    loss, metrics = liger_fused_linear_dpo(x, w, y, b, rx, rw, rb, -100, 0.1, False, True, True, False, 1, "sigmoid")
    assert len(metrics) == 7 and metrics[0].shape == (N_PAIRS,)
    loss.backward()
    assert rx.grad is None and x.grad is not None


def test_all_ignored_batch(passes):
    x, w, b, y, refs = make_inputs(torch.float32, True)
    y.fill_(-100)
    loss, metrics = LigerFusedLinearDPOLoss(compute_nll_loss=True)(w, x, y, b, *refs)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))  # every log-ratio is 0
    assert all(torch.isfinite(m).all() for m in metrics)
    assert (x.grad == 0).all() and (w.grad == 0).all() and (b.grad == 0).all()


def test_no_grad_gives_the_same_loss():
    x, w, b, y, refs = make_inputs(torch.float32, True)
    module = LigerFusedLinearDPOLoss()
    loss, _ = module(w, x, y, b, *refs)
    with torch.no_grad():
        again, _ = module(w, x, y, b, *refs)
    assert again.grad_fn is None
    torch.testing.assert_close(again, loss.detach())


def test_bad_inputs():
    x, w, b, y, refs = make_inputs(torch.float32, True)
    with pytest.raises(ValueError, match="`loss_type`"):
        LigerFusedLinearDPOLoss(loss_type="nope")
    with pytest.raises(ValueError, match="`use_ref_model=True` needs `ref_input`"):
        LigerFusedLinearDPOLoss()(w, x, y, b)
    with pytest.raises(ValueError, match="even"):
        LigerFusedLinearCPOLoss()(w, x[:3], y[:3], b)
    with pytest.raises(ValueError, match="`input`"):
        LigerFusedLinearCPOLoss()(w, x[0], y[0], b)


# ----------------------------------------------------------------------------- KTO


def kto_reference(x, w, b, y, labels, refs, kl, beta, average):
    seq, _ = seq_logps(x, w, b, y, average)
    ref_seq = (
        torch.zeros_like(seq)
        if refs is None
        else seq_logps(*[t.detach() if t is not None else None for t in refs], y, average)[0]
    )
    losses = trl_kto(seq, ref_seq, labels, beta, kl)
    rewards = beta * (seq - ref_seq)
    logits = F.linear(x, w, b)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    per_seq_logits = logits.sum((-1, -2))
    metrics = (
        seq[labels].sum(), seq[~labels].sum(), per_seq_logits[labels].sum(), per_seq_logits[~labels].sum(),
        rewards[labels].sum(), rewards[~labels].sum(),
    )  # fmt: skip
    return losses.mean(), metrics


@pytest.mark.parametrize(
    "dtype,opts",
    [
        (torch.float32, dict(use_ref_model=True)),
        (torch.float32, dict(use_ref_model=False, average_log_prob=True)),
        (torch.float32, dict(use_ref_model=True, kl=0.3, beta=0.5)),
        (torch.bfloat16, dict(use_ref_model=True, kl=0.1)),
    ],
)
def test_kto(dtype, opts, passes):
    n_seq = 5
    x, w, b, y, refs = make_inputs(dtype, True, n_seq=n_seq, ref=opts["use_ref_model"])
    labels = torch.tensor([True, False, True, True, False], device=DEVICE)
    kl = torch.tensor([opts["kl"]], device=DEVICE) if "kl" in opts else None
    beta, average = opts.get("beta", 0.1), opts.get("average_log_prob", False)
    module = LigerFusedLinearKTOLoss(beta=beta, use_ref_model=opts["use_ref_model"], average_log_prob=average)
    refs_args = refs or (None, None, None)
    loss, metrics = module(x, w, y, b, labels, *refs_args, kl=kl)
    leaves = [x, w, b]
    grads = torch.autograd.grad(loss, leaves)
    x64, w64, b64 = as64(x, w, b)
    ref64 = None if refs is None else [None if t is None else t.double() for t in refs]
    kl_value = 0.0 if kl is None else kl.item()
    ref_loss, ref_metrics = kto_reference(x64, w64, b64, y, labels, ref64, kl_value, beta, average)
    base_loss, base_metrics = kto_reference(x, w, b, y, labels, refs, kl_value, beta, average)
    ref_grads = torch.autograd.grad(ref_loss, [x64, w64, b64])
    base_grads = torch.autograd.grad(base_loss, leaves)
    check("loss", loss, ref_loss, base_loss)
    assert len(metrics) == 6
    # logits sums: the logits' size; rewards sums beta (sum logp - sum ref_logp) over a group, a
    # cancelling difference: the size of its two terms (log-probs <= 0, so |sum| is the sum of sizes)
    magnitudes = [None, None, *[logits_magnitude(x, w, b, "sum")] * 2]
    magnitudes += [(beta * ref_metrics[i]).abs().item() + (beta * ref_metrics[i] - ref_metrics[i + 4]).abs().item()
                   for i in (0, 1)]  # fmt: skip
    for i, (got, want, plain) in enumerate(zip(metrics, ref_metrics, base_metrics)):
        check(f"metric {i}", got, want, plain, magnitudes[i])
    for name, got, want, plain in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads, base_grads):
        check(name, got, want, plain)


def test_kto_functional():
    x, w, b, y, (rx, rw, rb) = make_inputs(torch.float32, False, n_seq=3)
    labels = torch.tensor([True, False, False], device=DEVICE)
    loss, metrics = liger_fused_linear_kto(x, w, y, labels, b, rx, rw, rb, None, -100, 0.1, True, True, False, 1)
    loss.backward()
    assert len(metrics) == 6 and x.grad is not None and w.grad is not None


def test_autocast_runs_the_head_in_its_dtype(passes):
    """bf16 hidden states beside an fp32 head under autocast (a mixed-precision trainer): the same
    result as the head cast to bf16 by hand, each gradient in its tensor's dtype."""
    x, w, b, y, refs = make_inputs(torch.bfloat16, True)
    w32, b32 = (t.detach().float().requires_grad_() for t in (w, b))
    refs32 = (refs[0], refs[1].float(), refs[2].float())
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, metrics = LigerFusedLinearDPOLoss()(w32, x, y, b32, *refs32)
    loss.backward()
    x_grad, x.grad = x.grad, None
    expected, expected_metrics = LigerFusedLinearDPOLoss()(w, x, y, b, *refs)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics, expected_metrics)
    assert x_grad.dtype == torch.bfloat16 and w32.grad.dtype == b32.grad.dtype == torch.float32
    torch.testing.assert_close(x_grad, x.grad)
    torch.testing.assert_close(w32.grad, w.grad.float())
    torch.testing.assert_close(b32.grad, b.grad.float())


def test_under_torch_compile():
    """A compiled training step runs the loss eagerly (one graph break), with the same result."""
    x, w, b, y, refs = make_inputs(torch.float32, True)
    module = LigerFusedLinearDPOLoss()
    expected = torch.autograd.grad(module(w, x, y, b, *refs)[0], [x, w])

    @torch.compile(backend="eager")
    def step(x, w):
        return module(w, x * 1.0, y, b, *refs)[0]

    got = torch.autograd.grad(step(x, w), [x, w])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("loss_type", ["sigmoid", "bco_pair"])
def test_reference_equal_to_policy_gives_zero_rewards(loss_type, passes):
    """A reference head identical to the policy (DPO's first step): its logits in the policy's
    dtype on either route, so the rewards are 0 up to summation order (with bf16 reference
    logits beside fp32 policy ones, bco_pair's two-pass route was off by a bf16 rounding)."""
    x, w, b, y, _ = make_inputs(torch.bfloat16, True, ref=False)
    loss_fn = LigerFusedLinearDPOLoss(loss_type=loss_type)
    _, outputs = loss_fn(w, x, y, b, x.detach(), w.detach(), b.detach())
    chosen, rejected, *_, chosen_rewards, rejected_rewards = outputs
    scale = torch.cat([chosen, rejected]).abs().max().item()
    assert torch.cat([chosen_rewards, rejected_rewards]).abs().max().item() <= 1e-6 * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bco_pair_whole_batch_route(monkeypatch, dtype):
    """bco_pair (its shift is the batch's mean reward) takes the whole-batch route where the batch's
    logits fit (here forced: N > 2H on CPU shapes), not the two-pass one; the kernels on both routes
    and the PyTorch reference (``LIGER_KERNEL_IMPL=torch``) agree, every output and gradient."""
    x, w, b, y, refs = make_inputs(dtype, True)
    used = []
    batch_loss = pref_module.fused_linear_logprobs_batch_loss
    monkeypatch.setattr(pref_module, "whole_batch_fits", lambda x, weight: True)
    monkeypatch.setattr(
        pref_module, "fused_linear_logprobs_batch_loss", lambda *a, **k: used.append(1) or batch_loss(*a, **k)
    )
    module = LigerFusedLinearDPOLoss(loss_type="bco_pair", compute_nll_loss=True)
    results = []
    for route in ("whole batch", "two passes", "torch"):
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch" if route == "torch" else "triton")
        monkeypatch.setattr(LigerFusedLinearPreferenceBase, "one_pass", route != "two passes")
        loss, metrics = module(w, x, y, b, *refs)
        results.append((loss, *metrics, *torch.autograd.grad(loss, (x, w, b))))
        if route == "whole batch":
            assert used == [1]
    # bf16: each tensor to 2e-2 of its own largest entry; the rewards, beta * (logp - ref_logp), to
    # beta times the log-probs' tolerance (two log-probs of ~30 whose bf16 logits round apart).
    rtol = 1e-5 if dtype == torch.float32 else 2e-2
    logp_tol = rtol * max(t.abs().max().item() for t in results[0][1:3])
    for other in results[1:]:
        for i, (a, c) in enumerate(zip(results[0], other)):
            atol = 2 * module.beta * logp_tol if i in (6, 7) else rtol * c.abs().max().item()
            torch.testing.assert_close(a.float(), c.float(), rtol=rtol, atol=max(atol, 1e-6))
