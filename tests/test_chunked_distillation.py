"""The distillation family of ``liger_kernel.chunked_loss`` (JSD, cosine, the base class and its
subclass hooks, Axolotl's top-k KD kernel on our base) against float64 references.

The JSD reference is TRL's own non-Liger loss (ported below), so the direction and ``beta``
convention are TRL's; the hard loss is PyTorch's cross-entropy; both over the non-ignored tokens."""

import math

import pytest
import torch
import torch.nn.functional as F
from parity import DEVICE, as64, assert_matches, randn

import liger_kernel.chunked_loss.fused_linear_distillation as distill
import liger_kernel.ops.jsd_distillation_rows as jsd_rows
from liger_kernel.chunked_loss import LigerFusedLinearCosineSimilarityLoss, LigerFusedLinearJSDLoss
from liger_kernel.chunked_loss.functional import liger_fused_linear_cosine, liger_fused_linear_jsd
from liger_kernel.chunked_loss.fused_linear_distillation import LigerFusedLinearDistillationBase
from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDFunction
from liger_kernel.ops import head_grad


def trl_generalized_jsd_loss(student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0):
    """TRL 0.24.0 ``GKDTrainer.generalized_jsd_loss`` (trl/trainer/gkd_trainer.py; unchanged in TRL
    1.16's trl/experimental/gkd), reduction "batchmean", verbatim but for the all-ignored case
    (TRL divides 0 by 0; the Liger losses give 0)."""
    student_logits = student_logits / temperature
    teacher_logits = teacher_logits / temperature
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        beta = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log(1 - beta), teacher_log_probs + torch.log(beta)]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    mask = labels != -100
    jsd = jsd[mask]
    return jsd.sum() / mask.sum().clamp(min=1)


def cosine_loss(student_logits, teacher_logits, labels, beta=0.5, temperature=1.0):
    """``beta * (1 - cos)`` per non-ignored token, averaged over them."""
    rows = beta * (1 - F.cosine_similarity(student_logits / temperature, teacher_logits / temperature, dim=-1))
    mask = labels != -100
    return rows[mask].sum() / mask.sum().clamp(min=1)


def reference(
    kind, x, w, xt, wt, y, b=None, bt=None, beta=0.5, temperature=1.0, weight_hard=0.5, weight_soft=0.5, zt=None
):
    """``(loss, soft, hard)`` from logits in the inputs' dtype (float64 for the reference); ``zt``:
    the teacher logits, when given instead of ``xt``, ``wt``, ``bt``."""
    z = F.linear(x.reshape(-1, x.shape[-1]), w, b).float() if x.dtype != torch.float64 else F.linear(x, w, b)
    z = z.reshape(-1, w.shape[0])
    if zt is None:
        zt = F.linear(xt.reshape(-1, xt.shape[-1]), wt, bt).detach()
    zt = zt.to(z.dtype)
    labels = y.reshape(-1)
    n = (labels != -100).sum().clamp(min=1)
    hard = F.cross_entropy(z, labels, ignore_index=-100, reduction="sum") / n
    if kind == "jsd":
        soft = trl_generalized_jsd_loss(z, zt, labels, beta, temperature)
    else:
        soft = cosine_loss(z, zt, labels, beta, temperature)
    return weight_hard * hard + weight_soft * soft, soft, hard


MODULES = {"jsd": LigerFusedLinearJSDLoss, "cosine": LigerFusedLinearCosineSimilarityLoss}


@pytest.fixture(autouse=True)
def blocks_of_chunk_size(monkeypatch):
    """Blocks of ``chunk_size`` tokens, so that these small batches run several (at least
    ``MIN_BLOCK_TOKENS`` = 2048 otherwise: one block)."""
    monkeypatch.setattr(distill, "MIN_BLOCK_TOKENS", 1)


def make_inputs(n, hidden, vocab, dtype, bias=False, teacher_hidden=None, ignored=(), batch=None):
    torch.manual_seed(n * 1000 + vocab)
    teacher_hidden = teacher_hidden or hidden
    x = randn(n, hidden, dtype=dtype, requires_grad=True)
    w = randn(vocab, hidden, dtype=dtype, requires_grad=True, scale=hidden**-0.5 * 3)
    xt = randn(n, teacher_hidden, dtype=dtype)
    wt = randn(vocab, teacher_hidden, dtype=dtype, scale=teacher_hidden**-0.5 * 3)
    y = torch.randint(0, vocab, (n,), device=DEVICE)
    for i in ignored:
        y[i] = -100
    b = randn(vocab, dtype=dtype, requires_grad=True) if bias else None
    bt = randn(vocab, dtype=dtype) if bias else None
    if batch:
        x = x.detach().view(batch, n // batch, hidden).requires_grad_()
        xt = xt.view(batch, n // batch, teacher_hidden)
        y = y.view(batch, n // batch)
    return x, w, xt, wt, y, b, bt


def check_against_reference(kind, inputs, chunk_size=1024, grad_scale=1.0, **options):
    """Loss and every student gradient of the module against float64, with PyTorch in the inputs'
    dtype (the reference run on them) as the yardstick. The teacher logits are those of the spec
    (``F.linear`` in the teacher's dtype: a frozen input of the loss, as the teacher's ``lm_head``
    gives them), the student's exact."""
    x, w, xt, wt, y, b, bt = inputs
    module = MODULES[kind](chunk_size=chunk_size, return_soft_hard_loss=True, **options)
    loss, soft, hard = module(x, w, xt, wt, y, b, bt)
    (loss * grad_scale).backward()
    ref_options = dict(
        beta=module.beta, temperature=module.temperature,
        weight_hard=module.weight_hard_loss, weight_soft=module.weight_soft_loss,
    )  # fmt: skip
    x64, w64, b64 = as64(x, w, b)
    zt = F.linear(xt.reshape(-1, xt.shape[-1]), wt, bt).double()
    ref = reference(kind, x64, w64, None, None, y, b64, zt=zt, **ref_options)
    (ref[0] * grad_scale).backward()
    same = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in (x, w, b)]
    base = reference(kind, same[0], same[1], xt, wt, y, same[2], bt, **ref_options)
    (base[0] * grad_scale).backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    for name, actual, expected, baseline in zip(("loss", "soft", "hard"), (loss, soft, hard), ref, base):
        assert_matches(name, actual, expected, baseline.float())
    for name, actual, expected, baseline in zip(("x", "w", "b"), (x, w, b), (x64, w64, b64), same):
        if actual is not None:
            assert actual.grad.dtype == actual.dtype
            assert_matches(f"grad {name}", actual.grad, expected.grad, baseline.grad)
    return loss, soft, hard


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_matches_trl(dtype, beta):
    inputs = make_inputs(23, 12, 37, dtype, bias=True, ignored=(2, 9))
    check_against_reference("jsd", inputs, chunk_size=8, beta=beta)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_rows_in_column_blocks(beta, reverse, monkeypatch):
    """The row kernel's passes over several column blocks (16 of 41 columns: the last one partial),
    the loss pass backwards or forwards, with a temperature (the cross-entropy's own log-sum-exp)."""
    monkeypatch.setattr(jsd_rows, "BLOCK_COLS", 16)
    monkeypatch.setattr(jsd_rows, "REVERSE_MIDDLE_PASS", reverse)
    inputs = make_inputs(15, 10, 41, torch.bfloat16, bias=True, ignored=(3,))
    check_against_reference("jsd", inputs, chunk_size=6, beta=beta, temperature=1.5)


@pytest.mark.parametrize("min_block", [2048, 5])
def test_blocks_of_at_least_min_block_tokens(min_block, monkeypatch):
    """``chunk_size`` below ``MIN_BLOCK_TOKENS`` gives blocks of ``MIN_BLOCK_TOKENS`` tokens: the
    same loss and gradients (one block, or several of 5 tokens; bf16, so the weight gradient's
    fp32 sum over blocks is rounded once either way)."""
    monkeypatch.setattr(distill, "MIN_BLOCK_TOKENS", min_block)
    blocks, mm_fp32 = [], distill.mm_fp32

    def spy(a, b, out):  # grad_x = dlogits @ W: one per block
        if out.shape[1] == 12:
            blocks.append(len(a))
        mm_fp32(a, b, out)

    monkeypatch.setattr(distill, "mm_fp32", spy)
    inputs = make_inputs(21, 12, 37, torch.bfloat16, ignored=(4,))
    check_against_reference("jsd", inputs, chunk_size=3, beta=0.3)
    assert blocks == ([20] if min_block == 2048 else [5, 5, 5, 5])  # the 20 kept tokens


@pytest.mark.parametrize("bias", [False, True])
def test_logits_as_the_spec_computes_them(bias, monkeypatch):
    """The row kernel gets the student's and the teacher's logits bit for bit as ``F.linear`` in the
    inputs' dtype gives them (the spec's ``chunk_forward``; bf16: half the traffic of fp32), the
    gradient is written over the student's (the buffer ``grad_out`` is them), and the loss is that
    of those rounded logits: at 20x the heads' scale, closer to the float64 loss of the bf16-rounded
    logits than fp32 logits would be."""
    x, w, xt, wt, y, b, bt = make_inputs(13, 16, 29, torch.bfloat16, bias=bias, ignored=(6,))
    w, wt = ((t.detach().float() * 20).bfloat16().requires_grad_(t.requires_grad) for t in (w, wt))
    seen, seen_t = [], []
    rows = LigerFusedLinearJSDFunction.rows_loss_and_grad.__func__

    def spy(cls, z, zt, target, grad_out, *args):
        assert grad_out.data_ptr() == z.data_ptr()
        seen.append(z.clone())
        seen_t.append(zt.clone())
        return rows(cls, z, zt, target, grad_out, *args)

    monkeypatch.setattr(LigerFusedLinearJSDFunction, "rows_loss_and_grad", classmethod(spy))
    loss = LigerFusedLinearJSDLoss(beta=0.4, chunk_size=4)(x, w, xt, wt, y, b, bt)
    kept = torch.cat([torch.arange(6), torch.arange(7, 13)])
    for got, expected in ((seen, F.linear(x, w, b)), (seen_t, F.linear(xt, wt, bt))):
        assert torch.cat(got).dtype == torch.bfloat16 and torch.equal(torch.cat(got), expected.detach()[kept])
    z64, zt64 = (F.linear(*t).detach().double() for t in ((x, w, b), (xt, wt, bt)))
    rounded = reference("jsd", z64, torch.eye(29, dtype=torch.float64, device=DEVICE), None, None, y, beta=0.4, zt=zt64)
    torch.testing.assert_close(loss.double(), rounded[0], rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cosine(dtype):
    check_against_reference("cosine", make_inputs(19, 12, 29, dtype, bias=True, ignored=(0,)), chunk_size=7, beta=0.7)


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=2.5, beta=0.3),
        dict(weight_hard_loss=0.0, weight_soft_loss=1.0),
        dict(weight_hard_loss=0.8, weight_soft_loss=0.25, beta=0.9, temperature=0.7),
    ],
)
def test_jsd_options_bias_and_sub_chunks(options, monkeypatch):
    """Temperature, weights, biases, a teacher of another width, 3-D inputs as TRL's GKD passes
    them, an upstream gradient other than 1, and sub-chunks inside blocks (budget of 3 rows)."""
    monkeypatch.setattr(distill, "LOGITS_BUDGET_BYTES", 3 * 41 * 4)  # fp32 teacher logits, nothing else
    inputs = make_inputs(24, 10, 41, torch.float32, bias=True, teacher_hidden=14, ignored=(5,), batch=2)
    check_against_reference("jsd", inputs, chunk_size=10, grad_scale=3.0, **options)


def test_called_as_trl_gkd_calls_it():
    """TRL 0.24's ``GKDTrainer.compute_loss`` (``use_liger_kernel``): the module built with
    ``beta``, ``ignore_index``, ``temperature``, ``compiled=False``, called by keyword on
    [B, T - 1, H] hidden states with -100 on the prompt and the padding, the heads' biases None."""
    loss_fn = LigerFusedLinearJSDLoss(beta=0.3, ignore_index=-100, temperature=0.9, compiled=False)
    x, w, xt, wt, y, _, _ = make_inputs(20, 8, 23, torch.float32, ignored=(0, 1, 2, 10, 11, 19), batch=2)
    loss = loss_fn(
        student_input=x, student_weight=w, teacher_input=xt, teacher_weight=wt, true_labels=y, student_bias=None,
        teacher_bias=None,
    )  # fmt: skip
    loss.backward()
    x64, w64 = as64(x, w)
    expected = reference("jsd", x64, w64, xt.double(), wt.double(), y, beta=0.3, temperature=0.9)[0]
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["jsd", "cosine"])
def test_all_ignored_gives_zero(kind):
    x, w, xt, wt, y, b, bt = make_inputs(9, 8, 17, torch.float32, bias=True, ignored=range(9))
    loss, soft, hard = check_against_reference(kind, (x, w, xt, wt, y, b, bt), chunk_size=4)
    assert loss.item() == soft.item() == hard.item() == 0.0
    assert not x.grad.any() and not w.grad.any() and not b.grad.any()


def test_empty_batch():
    x, w, xt, wt, y, _, _ = make_inputs(5, 8, 17, torch.float32)
    x0 = x.detach()[:0].requires_grad_()
    loss = LigerFusedLinearJSDLoss()(x0, w, xt[:0], wt, y[:0])
    loss.backward()
    assert loss.item() == 0.0 and x0.grad.shape == (0, 8) and not w.grad.any()


def test_default_outputs_and_functional():
    """Defaults as Liger 0.8.5 (a scalar loss; the functional form takes the Function's positional
    arguments); ``compiled`` changes nothing."""
    x, w, xt, wt, y, _, _ = make_inputs(11, 8, 19, torch.float32)
    loss = LigerFusedLinearJSDLoss()(x, w, xt, wt, y)
    assert isinstance(loss, torch.Tensor) and loss.shape == ()
    same = liger_fused_linear_jsd(x, w, xt, wt, y, None, None, 0.5, 0.5, 0.5, -100, 1.0, False, 3)
    torch.testing.assert_close(same, loss)
    cos = liger_fused_linear_cosine(x, w, xt, wt, y, None, None)
    torch.testing.assert_close(cos, LigerFusedLinearCosineSimilarityLoss(compiled=False)(x, w, xt, wt, y))
    module = LigerFusedLinearJSDLoss()
    for name, value in dict(
        weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, ignore_index=-100, temperature=1.0, compiled=True,
        chunk_size=1024, return_soft_hard_loss=False,
    ).items():  # fmt: skip
        assert getattr(module, name) == value


def test_no_grad_computes_no_gradients(monkeypatch):
    """Under torch.no_grad() the loss alone: no weight-gradient accumulator is built."""
    x, w, xt, wt, y, _, _ = make_inputs(11, 8, 19, torch.float32)
    built = []
    monkeypatch.setattr(distill.WeightGradAccumulator, "__init__", lambda self, weight: built.append(weight))
    with torch.no_grad():
        loss = LigerFusedLinearJSDLoss()(x, w, xt, wt, y)
    assert not built and not loss.requires_grad
    torch.testing.assert_close(loss, reference("jsd", x, w, xt, wt, y)[0].detach())


def test_under_torch_compile():
    """Inside a compiled function the loss runs eagerly as one graph break (its forward syncs and
    loops on the host; Dynamo failed tracing it before)."""
    x, w, xt, wt, y, _, _ = make_inputs(13, 8, 19, torch.float32, ignored=(2,))
    module = LigerFusedLinearJSDLoss(beta=0.4)
    loss = module(x, w, xt, wt, y)
    (grad,) = torch.autograd.grad(loss, x)
    compiled = torch.compile(lambda a: module(a * 1.0, w, xt, wt, y) * 2, backend="aot_eager")
    out = compiled(x)
    out.backward()
    torch.testing.assert_close(out, 2 * loss)
    torch.testing.assert_close(x.grad, 2 * grad)


def test_float64_runs_the_reference():
    x, w, xt, wt, y, b, bt = make_inputs(13, 8, 19, torch.float64, bias=True, ignored=(3,))
    loss = LigerFusedLinearJSDLoss(beta=0.2)(x, w, xt, wt, y, b, bt)
    loss.backward()
    x64, w64, b64 = as64(x, w, b)
    ref = reference("jsd", x64, w64, xt, wt, y, b64, bt, beta=0.2)[0]
    ref.backward()
    for actual, expected in ((loss, ref), (x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-10, atol=1e-12)


def test_torch_impl_runs_the_reference(monkeypatch):
    """``LIGER_KERNEL_IMPL=torch``: the whole-batch reference (``_compute_loss``), through autograd,
    with the soft/hard split."""
    from liger_kernel.ops.backends.registry import impl_for_call

    x, w, xt, wt, y, b, bt = make_inputs(13, 8, 19, torch.float32, bias=True, ignored=(3,))
    with impl_for_call("torch"):
        monkeypatch.setattr(distill, "chunked_distillation", None)  # would raise if called
        loss, soft, hard = LigerFusedLinearCosineSimilarityLoss(return_soft_hard_loss=True)(x, w, xt, wt, y, b, bt)
    loss.backward()
    assert not soft.requires_grad and not hard.requires_grad
    x64, w64, b64 = as64(x, w, b)
    ref = reference("cosine", x64, w64, xt.double(), wt.double(), y, b64, bt.double())
    ref[0].backward()
    for actual, expected in zip((loss, soft, hard, x.grad, w.grad, b.grad), (*ref, x64.grad, w64.grad, b64.grad)):
        torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n_vocab", [17, 18])
def test_weight_gradient_rounded_in_place(n_vocab, monkeypatch):
    """The bf16 weight gradient written over the first fp32 half: equal to the fp32 sum rounded
    once, through the first-step temporary and the doubling steps, odd and even vocabularies."""
    monkeypatch.setattr(head_grad, "FIRST_ROUNDING_ELEMENTS", 5)
    hidden = 7
    weight = torch.zeros(n_vocab, hidden, dtype=torch.bfloat16, device=DEVICE)
    acc = head_grad.WeightGradAccumulator(weight)
    chunks = [(randn(4, n_vocab).to(torch.bfloat16), randn(4, hidden).to(torch.bfloat16)) for _ in range(3)]
    for g, x in chunks:
        acc.add(g, x)
    grad = acc.finish()
    expected = sum(g.float().t() @ x.float() for g, x in chunks).to(torch.bfloat16)
    assert grad.shape == (n_vocab, hidden) and grad.dtype == torch.bfloat16 and grad._base is None
    assert torch.equal(grad, expected)


class ForwardKLFunction(LigerFusedLinearDistillationBase):
    """A user's subclass: its own hook (forward KL with a ``scale`` keyword through ``loss_kwargs``)
    on the base ``forward``."""

    @staticmethod
    def distillation_loss_fn(student_logits, teacher_logits, target=None, ignore_index=None, scale=1.0):
        log_p = torch.log_softmax(student_logits, -1)
        log_q = torch.log_softmax(teacher_logits, -1)
        rows = (log_q.exp() * (log_q - log_p)).sum(-1) * scale
        return torch.where(target != ignore_index, rows, 0.0).sum()

    @classmethod
    def forward(cls, ctx, x, w, xt, wt, y, chunk_size, temperature):
        return super().forward(
            cls, ctx, x, w, xt, wt, y, chunk_size=chunk_size, temperature=temperature, weight_hard_loss=0.25,
            weight_soft_loss=1.0, scale=2.0,
        )  # fmt: skip

    @staticmethod
    def backward(ctx, grad_output):
        return (*LigerFusedLinearDistillationBase.backward(ctx, grad_output)[:5], None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_custom_subclass_hook(dtype):
    x, w, xt, wt, y, _, _ = make_inputs(21, 9, 31, dtype, ignored=(4, 5))
    loss = ForwardKLFunction.apply(x, w, xt, wt, y, 6, 1.5)
    loss.backward()
    x64, w64, xt64, wt64 = as64(x, w, xt, wt)

    def ref(x_, w_, xt_, wt_):
        loss_, soft, hard = reference("jsd", x_, w_, xt_, wt_, y, beta=0.0, temperature=1.5)
        return 0.25 * hard + 2.0 * soft

    expected = ref(x64, w64, xt64, wt64)
    expected.backward()
    same = [t.detach().requires_grad_() for t in (x, w)]
    base = ref(*same, xt, wt)
    base.backward()
    assert_matches("loss", loss, expected, base.float())
    assert_matches("grad x", x.grad, x64.grad, same[0].grad)
    assert_matches("grad w", w.grad, w64.grad, same[1].grad)


class SoftOnlyJSDFunction(LigerFusedLinearJSDFunction):
    """A subclass keeping the JSD hook (so its row kernel) without the cross-entropy."""

    @classmethod
    def forward(cls, ctx, x, w, xt, wt, y, beta):
        return LigerFusedLinearDistillationBase.forward(
            cls, ctx, x, w, xt, wt, y, chunk_size=5, beta=beta, compute_ce_loss=False, return_soft_hard_loss=True
        )

    @staticmethod
    def backward(ctx, grad_output, *args):
        return (*LigerFusedLinearDistillationBase.backward(ctx, grad_output)[:5], None)


@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_without_cross_entropy(beta):
    """``compute_ce_loss=False``: the hard loss is 0 and only the soft term has a gradient."""
    x, w, xt, wt, y, _, _ = make_inputs(17, 9, 31, torch.float32, ignored=(3,))
    loss, soft, hard = SoftOnlyJSDFunction.apply(x, w, xt, wt, y, beta)
    loss.backward()
    x64, w64, xt64, wt64 = as64(x, w, xt, wt)
    expected = reference("jsd", x64, w64, xt64, wt64, y, beta=beta)[1] * 0.5
    expected.backward()
    assert hard.item() == 0.0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


def test_base_hook_is_abstract():
    with pytest.raises(NotImplementedError):
        LigerFusedLinearDistillationBase.distillation_loss_fn(torch.zeros(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(wt=torch.zeros(5, 8)), "share one vocabulary"),
        (dict(w=torch.zeros(19, 7)), "student_weight"),
        (dict(xt=torch.zeros(3, 8)), "teacher_input"),
        (dict(y=torch.full((11,), 19, device=DEVICE)), "outside"),
        (dict(y=torch.zeros(11)), "integer"),
        (dict(beta=1.5), "beta"),
        (dict(temperature=0.0), "temperature"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_clear_errors(change, message):
    x, w, xt, wt, y, _, _ = make_inputs(11, 8, 19, torch.float32)
    args = dict(x=x, w=w, xt=xt, wt=wt, y=y, beta=0.5, temperature=1.0, chunk_size=4)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        LigerFusedLinearJSDFunction.apply(
            args["x"], args["w"], args["xt"], args["wt"], args["y"], None, None, 0.5, 0.5, args["beta"], -100,
            args["temperature"], True, args["chunk_size"],
        )  # fmt: skip


# ----------------------------------------------------------------------------- Axolotl 0.21


def test_axolotl_topk_kd_kernel_on_our_base():
    """Axolotl 0.21's ``LigerFusedLinearKLTopKLogprobFunction`` (axolotl/integrations/kd/kernels/
    liger.py) subclasses our base with its own forward and backward (torch.func per chunk, its
    hook ``distillation_loss_fn``): it must import and give the float64 top-k KD loss it computes
    (KL of the renormalized top-k times T^2, plus CE, summed) and its gradients, which Axolotl's
    forward takes of the loss without the T^2 factor."""
    kernels = pytest.importorskip(
        "axolotl.integrations.kd.kernels.liger",
        reason="axolotl is not installed (pip install axolotl==0.21.0 --no-deps)",
    )
    assert issubclass(kernels.LigerFusedLinearKLTopKLogprobFunction, LigerFusedLinearDistillationBase)
    torch.manual_seed(0)
    batch, seq, hidden, vocab, top_k, temperature = 2, 7, 8, 23, 4, 2.0
    x = randn(batch, seq, hidden, requires_grad=True)
    w = randn(vocab, hidden, requires_grad=True)
    ids = torch.stack([torch.randperm(vocab)[:top_k] for _ in range(batch * seq)]).view(batch, seq, top_k)
    logprobs = torch.log_softmax(torch.randn(batch, seq, top_k), -1)
    mask = torch.ones(batch, seq, top_k, dtype=torch.long)
    mask[0, 1, 2:] = 0
    labels = torch.randint(0, vocab, (batch, seq))
    labels[1, 3] = -100
    module = kernels.LigerFusedLinearKLTopKLogprobLoss(0.3, 0.7, temperature, beta=0.0, compiled=False, chunk_size=5)
    loss = module(w, x, ids, logprobs, mask, labels)
    loss.backward()

    x64, w64 = as64(x, w)
    z = (x64 @ w64.t()).reshape(-1, vocab)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    ce = F.cross_entropy(z, shifted, ignore_index=-100, reduction="sum")
    log_p = torch.log_softmax(z / temperature, -1).gather(-1, ids.reshape(-1, top_k))
    log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)  # the top-k renormalized
    valid = mask.reshape(-1, top_k).bool()
    teacher = logprobs.reshape(-1, top_k).double()
    kl = (teacher.exp() * (teacher - log_p))[valid].sum()
    expected = 0.7 * kl * temperature**2 + 0.3 * ce
    (0.7 * kl + 0.3 * ce).backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)
    assert math.isfinite(loss.item())
