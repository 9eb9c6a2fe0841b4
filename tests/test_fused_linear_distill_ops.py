"""The fused-head divergence losses (JSD and KL from hidden states and heads) and the fused
cross-entropy + TVD on logits, against float64 references and the textbook formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from divergence_cases import (
    IGNORE,
    away_from_tvd_kinks,
    check_parity,
    copies,
    distributions,
    generalized_jsd,
    labels_with_ignored,
    run,
)
from parity import DEVICE, DTYPES, assert_matches, randn, sizes

import liger_kernel.ops.divergence as divergence
from liger_kernel.ops.fused_ce_tvd import (
    LigerFusedCETVDFunction,
    fused_ce_tvd_backward,
    fused_ce_tvd_forward,
    fused_ce_tvd_reference,
)
from liger_kernel.ops.fused_linear_jsd import (
    LigerFusedLinearJSDFunction,
    fused_linear_jsd_backward,
    fused_linear_jsd_forward,
    fused_linear_jsd_reference,
)
from liger_kernel.ops.fused_linear_kl_div import (
    LigerFusedLinearKLDivFunction,
    fused_linear_kl_div_backward,
    fused_linear_kl_div_forward,
    fused_linear_kl_div_reference,
)
from liger_kernel.transformers import LigerFusedCETVDLoss, LigerFusedLinearJSD, LigerFusedLinearKLDivLoss
from liger_kernel.transformers.functional import liger_fused_linear_jsd, liger_fused_linear_kl_div

# (tokens, student hidden, teacher hidden, vocab): odd sizes; a vocabulary over several column
# blocks (``narrow_blocks`` on the CPU: the interpreter pays ~20 ms per Triton helper call under load)
SHAPES = sizes(cpu=[(7, 11, 5, 37), (3, 9, 9, 300)], gpu=[(2049, 2048, 1536, 128256), (1000, 1024, 1536, 32001)])
SMALL, WIDE = SHAPES
# The wide shape in two dtypes only on the CPU.
WIDE_DTYPES = DTYPES if sizes(cpu=False, gpu=True) else [torch.float32, torch.bfloat16]


@pytest.fixture
def narrow_blocks(monkeypatch):
    """Column blocks of 64 on the CPU, so the row kernels loop over several (the last one masked)."""
    monkeypatch.setattr(divergence, "MAX_BLOCK", sizes(cpu=64, gpu=divergence.MAX_BLOCK))


TEMPERATURE = 2.0


# Tokens of a chunk and vocabulary rows of a weight-gradient block under ``small_chunks``: a handful
# of each per call (on the GPU, blocks of a few rows meant ~10^5 launches a call: 270 s for 12 tests).
CHUNK_ROWS, W_BLOCK_ROWS = sizes(cpu=(7, 10), gpu=(SMALL[0] // 5, SMALL[3] // 5))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few tokens, so the chunk loop and the gradient accumulation run several times,
    into weight-gradient blocks of a few vocabulary rows."""
    monkeypatch.setattr(divergence, "CHUNK_BUDGET_BYTES", CHUNK_ROWS * SMALL[3] * 4)
    monkeypatch.setattr(divergence, "W_BLOCK_BYTES", W_BLOCK_ROWS * SMALL[1] * 4)


def head(n, hidden, vocab, dtype, requires_grad=True):
    x = randn(n, hidden, dtype=dtype, requires_grad=requires_grad)
    w = randn(vocab, hidden, dtype=dtype, requires_grad=requires_grad, scale=2.0 / math.sqrt(hidden))
    return x, w


def labels_for(n, case):
    return None if case == "no-labels" else labels_with_ignored(n, all_ignored=case == "all-ignored")


# ----------------------------------------------------------------------------- fused linear JSD


def check_jsd(shape, dtype, beta, labels=None, teacher_grad=False, student_weight_grad=True):
    n, hs, ht, vocab = shape
    xs, ws = head(n, hs, vocab, dtype)
    xt, wt = head(n, ht, vocab, dtype, requires_grad=teacher_grad)
    ws.requires_grad_(student_weight_grad)
    check_parity(
        "fused_linear_jsd",
        lambda *a: LigerFusedLinearJSDFunction.apply(*a, labels, beta, IGNORE, TEMPERATURE),
        lambda *a: fused_linear_jsd_reference(*a, labels, beta, IGNORE, TEMPERATURE),
        [xs, ws, xt, wt],
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_fused_linear_jsd(dtype, beta):
    check_jsd(SMALL, dtype, beta, labels_for(SMALL[0], "some-ignored"))


@pytest.mark.parametrize("dtype", WIDE_DTYPES)
def test_fused_linear_jsd_wide_vocabulary(narrow_blocks, dtype):
    check_jsd(WIDE, dtype, 0.3, labels_for(WIDE[0], "some-ignored"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["no-labels", "all-ignored"])
def test_fused_linear_jsd_chunked_with_trained_teacher(small_chunks, dtype, case):
    """Several chunks; the teacher's input and head differentiable too (the symmetric gradients)."""
    check_jsd(SMALL, dtype, 0.3, labels_for(SMALL[0], case), teacher_grad=True)


def test_fused_linear_jsd_frozen_student_head():
    check_jsd(SMALL, torch.bfloat16, 0.5, student_weight_grad=False)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_fused_linear_jsd_reference_is_trl_on_logits(beta):
    """The spec equals TRL's generalized JSD of the materialized temperature-scaled log-softmax."""
    n, hs, ht, vocab = SMALL
    xs, ws = head(n, hs, vocab, torch.float64)
    xt, wt = head(n, ht, vocab, torch.float64)
    labels = labels_for(n, "some-ignored")
    ref = fused_linear_jsd_reference(xs, ws, xt, wt, labels, beta, IGNORE, TEMPERATURE)
    log_q = torch.log_softmax(xs @ ws.T / TEMPERATURE, -1)
    log_p = torch.log_softmax(xt @ wt.T / TEMPERATURE, -1)
    torch.testing.assert_close(ref, generalized_jsd(log_q, log_p, labels, beta))


def test_fused_linear_jsd_accum_dtype_and_low_level_helpers():
    n, hs, ht, vocab = SMALL
    xs, ws = head(n, hs, vocab, torch.bfloat16)
    xt, wt = head(n, ht, vocab, torch.bfloat16, requires_grad=False)
    labels = labels_for(n, "some-ignored")
    ref, _, (ref_x, ref_w) = run(
        lambda x, w: fused_linear_jsd_reference(x, w, xt.double(), wt.double(), labels, 0.5, IGNORE, TEMPERATURE),
        copies([xs, ws], torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
    )
    loss = LigerFusedLinearJSDFunction.apply(xs, ws, xt, wt, labels, 0.5, IGNORE, TEMPERATURE, torch.bfloat16)
    (loss * 1.5).backward()
    loss2, grad_x, grad_w = fused_linear_jsd_forward(xs, ws, xt, wt, labels, 0.5, IGNORE, True, TEMPERATURE)
    grad_x, grad_w = fused_linear_jsd_backward(torch.tensor(1.5, device=DEVICE), grad_x, grad_w)
    for name, value, expected in (
        ("loss", loss, ref), ("accum bf16 dx", xs.grad, ref_x), ("accum bf16 dW", ws.grad, ref_w),
        ("low-level loss", loss2, ref), ("low-level dx", grad_x, ref_x), ("low-level dW", grad_w, ref_w),
    ):  # fmt: skip
        assert_matches(name, value, expected)


def test_fused_linear_jsd_module_and_functional():
    n, hs, ht, vocab = SMALL
    xs, ws = head(n, hs, vocab, torch.float32)
    xt, wt = head(n, ht, vocab, torch.float32, requires_grad=False)
    labels = labels_for(n, "some-ignored")
    expected = fused_linear_jsd_reference(*copies([xs, ws, xt, wt], torch.float64), labels, 0.2, IGNORE, 3.0)
    module = LigerFusedLinearJSD(jsd_beta=0.2, temperature=3.0)
    assert (module.jsd_beta, module.temperature, module.ignore_index, module.accum_dtype) == (0.2, 3.0, -100, None)
    assert_matches("module", module(xs, ws, xt, wt, labels), expected)
    assert_matches("functional", liger_fused_linear_jsd(xs, ws, xt, wt, labels, 0.2, IGNORE, 3.0), expected)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"wt": torch.zeros(36, 5)}, ValueError, "both heads must share the vocabulary"),
        ({"xt": torch.zeros(6, 5)}, ValueError, "`student_input` has 7 rows but `teacher_input` has 6"),
        ({"ws": torch.zeros(37, 10)}, ValueError, "`student_weight` must be \\[V, H\\]"),
        ({"beta": 2.0}, ValueError, "`jsd_beta` must be in \\[0, 1\\]"),
        ({"temperature": 0.0}, ValueError, "`temperature` must be a number > 0"),
        ({"xs": torch.zeros(7, 11, dtype=torch.float16)}, TypeError, "`student_input` is torch.float16 but"),
    ],
)
def test_fused_linear_jsd_bad_arguments(change, error, match):
    n, hs, ht, vocab = 7, 11, 5, 37
    args = dict(zip(("xs", "ws"), head(n, hs, vocab, torch.float32))) | dict(
        zip(("xt", "wt"), head(n, ht, vocab, torch.float32))
    )
    args |= {"labels": None, "beta": 0.5, "ignore_index": IGNORE, "temperature": 1.0}
    args |= {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in change.items()}
    with pytest.raises(error, match=match):
        LigerFusedLinearJSDFunction.apply(*args.values())


# ----------------------------------------------------------------------------- fused linear KL


def check_kl(shape, dtype, reduction, labels=None, target_grad=False):
    n, hidden, _, vocab = shape
    xs, ws = head(n, hidden, vocab, dtype)
    target = distributions((n, vocab), dtype, requires_grad=target_grad)
    check_parity(
        "fused_linear_kl_div",
        lambda *a: LigerFusedLinearKLDivFunction.apply(*a, labels, reduction, IGNORE, TEMPERATURE),
        lambda *a: fused_linear_kl_div_reference(*a, labels, reduction, IGNORE, TEMPERATURE),
        [xs, ws, target],
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_fused_linear_kl_div(dtype, reduction):
    check_kl(SMALL, dtype, reduction, labels_for(SMALL[0], "some-ignored"))


@pytest.mark.parametrize("dtype", WIDE_DTYPES)
def test_fused_linear_kl_div_wide_vocabulary(narrow_blocks, dtype):
    check_kl(WIDE, dtype, "batchmean", labels_for(WIDE[0], "some-ignored"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "batchmean"])
@pytest.mark.parametrize("case", ["no-labels", "all-ignored"])
def test_fused_linear_kl_div_chunked_with_target_gradient(small_chunks, dtype, reduction, case):
    check_kl(SMALL, dtype, reduction, labels_for(SMALL[0], case), target_grad=True)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
def test_fused_linear_kl_div_reference_is_torch_kl_div_on_logits(reduction):
    n, hidden, _, vocab = SMALL
    xs, ws = head(n, hidden, vocab, torch.float64)
    target = distributions((n, vocab), torch.float64)
    labels = labels_for(n, "some-ignored")
    ref = fused_linear_kl_div_reference(xs, ws, target, labels, reduction, IGNORE, TEMPERATURE)
    keep = labels != IGNORE
    per_element = F.kl_div(torch.log_softmax(xs @ ws.T / TEMPERATURE, -1), target, reduction="none") * keep[:, None]
    expected = {
        "none": per_element.sum(-1),
        "sum": per_element.sum(),
        "mean": per_element.sum() / (keep.sum() * vocab),
        "batchmean": per_element.sum() / keep.sum(),
    }[reduction]
    torch.testing.assert_close(ref, expected)


def test_fused_linear_kl_div_module_functional_and_low_level_helpers():
    n, hidden, _, vocab = SMALL
    xs, ws = head(n, hidden, vocab, torch.float32)
    target = distributions((n, vocab), torch.float32, requires_grad=False)
    labels = labels_for(n, "some-ignored")
    # the reference in float64, and in fp32 as the yardstick (a contraction over the whole vocabulary
    # rounds more than the floor alone allows at GPU sizes: dx 1.7e-8 against 3.9e-9 at V=128256)
    (ref, _, (ref_x, ref_w)), (base, _, (base_x, base_w)) = (
        run(
            lambda x, w: fused_linear_kl_div_reference(x, w, target.to(x.dtype), labels, "sum", IGNORE, 3.0),
            copies([xs, ws], dtype),
            torch.tensor(0.5, dtype=dtype, device=DEVICE),
        )
        for dtype in (torch.float64, torch.float32)
    )
    module = LigerFusedLinearKLDivLoss(reduction="sum", temperature=3.0)
    assert (module.reduction, module.temperature, module.eps, module.ignore_index) == ("sum", 3.0, 1e-10, -100)
    assert_matches("module", module(xs, ws, target, labels), ref, base)
    assert_matches("functional", liger_fused_linear_kl_div(xs, ws, target, labels, "sum", IGNORE, 3.0), ref, base)
    loss, grad_x, grad_w = fused_linear_kl_div_forward(xs, ws, target, labels, "sum", IGNORE, True, 3.0, 1e-10)
    grad_x, grad_w = fused_linear_kl_div_backward(torch.tensor(0.5, device=DEVICE), grad_x, grad_w)
    assert_matches("low-level loss", loss, ref, base)
    assert_matches("low-level dx", grad_x, ref_x, base_x)
    assert_matches("low-level dW", grad_w, ref_w, base_w)
    with pytest.raises(ValueError, match="`target` must hold the teacher's probabilities"):
        module(xs, ws, target[:, :-1])


# ----------------------------------------------------------------------------- fused CE + TVD


def ce_tvd_textbook(zs, zt, target):
    keep = target != IGNORE
    tvd = 0.5 * (zs.softmax(-1) - zt.softmax(-1)).abs().sum(-1)
    return F.cross_entropy(zs, target, ignore_index=IGNORE), (tvd * keep).sum() / keep.sum()


@pytest.mark.parametrize(
    "shape, dtype", [(SMALL[::3], dtype) for dtype in DTYPES] + [(WIDE[::3], dtype) for dtype in WIDE_DTYPES]
)
@pytest.mark.parametrize("case", ["some-ignored", "all-ignored"])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.3, 0.7)], ids=["tvd-unused", "both"])
def test_fused_ce_tvd(narrow_blocks, shape, dtype, case, weights):
    n, vocab = shape
    zs, zt = randn(n, vocab, dtype=dtype, requires_grad=True), randn(n, vocab, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (n,), device=DEVICE)
    target[::3] = IGNORE
    if case == "all-ignored":
        target[:] = IGNORE
    check_parity(
        "fused_ce_tvd",
        lambda a, b: weighted(LigerFusedCETVDFunction.apply(a, b, target), weights),
        lambda a, b: weighted(fused_ce_tvd_reference(a, b, target), weights),
        [zs, zt],
        dtype,
        grad_mask=away_from_tvd_kinks(zs, zt),
    )


def weighted(losses, weights):
    """``w0 ce + w1 tvd``, leaving the TVD out of the graph when its weight is 0."""
    return losses[0] * weights[0] + losses[1] * weights[1] if weights[1] else losses[0] * weights[0]


def test_fused_ce_tvd_reference_is_textbook_and_helpers_agree():
    zs, zt = randn(13, 37, dtype=torch.float64, requires_grad=True), randn(13, 37, dtype=torch.float64)
    target = torch.randint(0, 37, (13,), device=DEVICE)
    target[::4] = IGNORE
    ce, tvd = fused_ce_tvd_reference(zs, zt, target)
    book_ce, book_tvd = ce_tvd_textbook(zs, zt, target)
    torch.testing.assert_close((ce, tvd), (book_ce, book_tvd))
    (ref_grad,) = torch.autograd.grad(2 * book_ce + 3 * book_tvd, zs)
    z32, t32 = zs.detach().float(), zt.float()
    ce2, tvd2, lse_s, lse_t, sigma = fused_ce_tvd_forward(z32, t32, target, IGNORE)
    grad = fused_ce_tvd_backward(2.0, 3.0, z32, t32, target, lse_s, lse_t, sigma, IGNORE)
    assert_matches("ce", ce2, book_ce)
    assert_matches("tvd", tvd2, book_tvd)
    assert_matches("grad", grad, ref_grad)
    module_ce, module_tvd = LigerFusedCETVDLoss()(z32, t32, target)
    assert_matches("module ce", module_ce, book_ce)
    assert_matches("module tvd", module_tvd, book_tvd)


def test_fused_ce_tvd_rejects_bad_labels():
    zs, zt = randn(5, 37), randn(5, 37)
    with pytest.raises(ValueError, match="37"):
        LigerFusedCETVDFunction.apply(zs, zt, torch.full((5,), 37, device=DEVICE))


# ----------------------------------------------------------------------------- the implementation switch


def test_torch_impl_runs_the_references(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    n, hs, ht, vocab = SMALL
    xs, ws = head(n, hs, vocab, torch.bfloat16)
    xt, wt = head(n, ht, vocab, torch.bfloat16, requires_grad=False)
    target = distributions((n, vocab), torch.bfloat16, requires_grad=False)
    labels = labels_for(n, "some-ignored")
    cases = [
        (
            lambda x, w: LigerFusedLinearJSDFunction.apply(x, w, xt, wt, labels),
            lambda x, w: fused_linear_jsd_reference(x, w, xt, wt, labels),
        ),
        (
            lambda x, w: LigerFusedLinearKLDivFunction.apply(x, w, target, labels),
            lambda x, w: fused_linear_kl_div_reference(x, w, target, labels),
        ),
    ]
    for fn, reference in cases:
        out, upstream, grads = run(fn, copies([xs, ws]))
        ref, _, ref_grads = run(reference, copies([xs, ws]), upstream)
        assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_torch_impl_runs_the_reference_of_ce_tvd(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    zs, zt = randn(7, 37, dtype=torch.bfloat16, requires_grad=True), randn(7, 37, dtype=torch.bfloat16)
    target = labels_with_ignored(7, n_classes=37)
    out, upstream, grads = run(lambda a: sum(LigerFusedCETVDFunction.apply(a, zt, target)), copies([zs]))
    ref, _, ref_grads = run(lambda a: sum(fused_ce_tvd_reference(a, zt, target)), copies([zs]), upstream)
    assert torch.equal(out, ref) and torch.equal(grads[0], ref_grads[0])
