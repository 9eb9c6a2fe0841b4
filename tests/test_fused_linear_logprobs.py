import pytest
import torch
from parity import DEVICE, ON_GPU, as64, assert_matches, randn, sizes
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from liger_kernel.ops import fused_linear_logprobs as flp
from liger_kernel.ops.fused_linear_logprobs import (
    frozen_head_logprobs,
    fused_linear_logprobs,
    fused_linear_logprobs_loss,
    fused_linear_logprobs_reference,
)

SHAPES = sizes(cpu=[(23, 16, 37), (37, 24, 301)], gpu=[(4096, 4096, 128256), (1023, 512, 50257)])
CASES = {
    "plain": dict(),
    "bias+ignore": dict(bias=True, ignore=True),
    "temperature+bias+ignore": dict(bias=True, ignore=True, temperature=0.7),
    "all ignored": dict(bias=True, all_ignored=True),
}


@pytest.fixture
def small_chunks(monkeypatch):
    """Several token chunks and vocabulary tiles on CPU shapes (the GPU shapes have several at
    the real budgets)."""
    if not ON_GPU:
        monkeypatch.setattr(flp, "EXACT_ROWS_BUDGET_BYTES", 8 * 301 * 4)
        monkeypatch.setattr(flp, "EXACT_TILE_BUDGET_BYTES", 37 * 4 * 40)


def make_inputs(n, h, v, dtype, bias=False, ignore=False, all_ignored=False, **_):
    x = randn(n, h, dtype=dtype, requires_grad=True)
    w = randn(v, h, dtype=dtype, requires_grad=True, scale=h**-0.5 * 3)
    b = randn(v, dtype=dtype, requires_grad=True) if bias else None
    y = torch.randint(0, v, (n,), device=DEVICE)
    if ignore:
        y[torch.rand(n, device=DEVICE) < 0.3] = -100
    if all_ignored:
        y.fill_(-100)
    return x, w, b, y


def grads_of(out, upstream, tensors):
    wanted = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, wanted, upstream)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_match_float64(shape, dtype, case, small_chunks):
    opts = CASES[case]
    temperature = opts.get("temperature", 1.0)
    x, w, b, y = make_inputs(*shape, dtype, **opts)
    upstream = torch.randn(shape[0], device=DEVICE)
    out = fused_linear_logprobs(x, w, y, b, temperature)
    assert out.dtype == torch.float32 and out.shape == (shape[0],)
    base = fused_linear_logprobs_reference(x, w, y, b, temperature)
    x64, w64, b64 = as64(x, w, b)
    ref = fused_linear_logprobs_reference(x64, w64, y, b64, temperature)
    assert_matches("logp", out, ref, base)
    if opts.get("all_ignored"):
        assert (out == 0).all()
    for name, got, want, plain in zip(
        ("grad_x", "grad_w", "grad_b"),
        grads_of(out, upstream, (x, w, b)),
        grads_of(ref, upstream.double(), (x64, w64, b64)),
        grads_of(base, upstream, (x, w, b)),
    ):
        assert got.dtype == dtype
        assert_matches(name, got, want, plain)


def test_weight_only_and_no_grad():
    x, w, b, y = make_inputs(19, 8, 45, torch.float32, bias=True)
    x.requires_grad_(False)
    out = fused_linear_logprobs(x, w, y, b)
    (gw,) = torch.autograd.grad(out.sum(), [w])
    x64, w64, b64 = as64(x, w, b)
    (gw64,) = torch.autograd.grad(fused_linear_logprobs_reference(x64, w64, y, b64).sum(), [w64])
    assert_matches("grad_w", gw, gw64)
    with torch.no_grad():
        assert fused_linear_logprobs(x, w, y, b).grad_fn is None


def test_bad_inputs():
    x, w, b, y = make_inputs(5, 8, 11, torch.float32)
    y[2] = 11
    with pytest.raises(ValueError, match="label"):
        fused_linear_logprobs(x, w, y)
    with pytest.raises(ValueError, match="`target`"):
        fused_linear_logprobs(x, w, y[:4])
    with pytest.raises(ValueError, match="`temperature`"):
        fused_linear_logprobs(x, w, y.clamp(max=10), temperature=0.0)


def pair_loss(logp, n_pairs, seq):
    """A loss coupling two sequences of a pair: -logsigmoid(sum chosen - sum rejected)."""
    per_seq = logp.view(2, n_pairs, seq).sum(-1)
    return -torch.nn.functional.logsigmoid(per_seq[0] - per_seq[1]).sum()


@pytest.mark.parametrize("temperature", [0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_one_pass_loss_matches_float64(dtype, bias, temperature):
    """Chunks of whole pairs (chosen rows b*T.., rejected rows (B+b)*T..), an uncovered pair, with
    and without a temperature (without: bf16 logits, the spec's): loss, logp and every gradient
    against float64 autograd through the reference."""
    n_pairs, seq, h, v = 3, 7, 16, 53
    n = 2 * n_pairs * seq
    x, w, b, y = make_inputs(n, h, v, dtype, bias=bias, ignore=True)
    rows = torch.arange(n, device=DEVICE).view(2, n_pairs, seq)
    chunks = [rows[:, :2].reshape(-1), rows[:, 2:].reshape(-1)[:0], rows[:, 2:].reshape(-1)]
    sizes_ = [2, 0, 1]

    def loss_fn(k, logp):
        return pair_loss(logp, sizes_[k], seq) if sizes_[k] else logp.sum() * 0

    loss, logp, gx, gw, gb = fused_linear_logprobs_loss(x, w, y, b, chunks, loss_fn, temperature=temperature)
    x64, w64, b64 = as64(x, w, b)
    ref_logp = fused_linear_logprobs_reference(x64, w64, y, b64, temperature)
    ref_loss = pair_loss(ref_logp, n_pairs, seq)
    base_logp = fused_linear_logprobs_reference(x, w, y, b, temperature)
    base_loss = pair_loss(base_logp, n_pairs, seq)
    assert_matches("loss", loss, ref_loss, base_loss.float())
    assert_matches("logp", logp, ref_logp, base_logp)
    got = [t for t in (gx, gw, gb) if t is not None]
    for name, g, want, plain in zip(
        ("grad_x", "grad_w", "grad_b"),
        got,
        torch.autograd.grad(ref_loss, [t for t in (x64, w64, b64) if t is not None]),
        torch.autograd.grad(base_loss, [t for t in (x, w, b) if t is not None]),
    ):
        assert g.dtype == dtype
        assert_matches(name, g, want, plain)


def check_loss_run(result, x, w, b, y, loss_of_logp):
    """``(loss, logp, grad_x, grad_W, grad_b)`` of an engine against float64 autograd through the
    reference, with the reference in the input dtype as the yardstick."""
    loss, logp, *grads = result
    x64, w64, b64 = as64(x, w, b)
    ref_logp = fused_linear_logprobs_reference(x64, w64, y, b64)
    ref_loss = loss_of_logp(ref_logp)
    base_logp = fused_linear_logprobs_reference(x, w, y, b)
    base_loss = loss_of_logp(base_logp)
    # The loss is one value made of every token's log-prob: its error is one sample, which against the
    # reference's one sample can exceed twice it by chance (bf16, N=2H on the H200: 1.76e-2 vs 2 x 8.2e-3
    # of a loss of 27). So it may also carry what the log-probs' checked bound allows, each token's twice
    # the reference's error, through the loss's sensitivity to it: sum_t |dL/dlogp_t| 2 |logp_t error|.
    logp64 = ref_logp.detach().requires_grad_()
    (sensitivity,) = torch.autograd.grad(loss_of_logp(logp64), logp64)
    carried = 2 * (sensitivity.abs() * (base_logp.detach().double() - ref_logp.detach()).abs()).sum().item()
    assert_matches("loss", loss, ref_loss, base_loss.float(), atol=carried)
    assert_matches("logp", logp, ref_logp, base_logp)
    leaves = [(g, t, t64) for g, t, t64 in zip(grads, (x, w, b), (x64, w64, b64)) if t is not None]
    wants = torch.autograd.grad(ref_loss, [t64 for _, _, t64 in leaves])
    plains = torch.autograd.grad(base_loss, [t for _, t, _ in leaves])
    for name, (got, t, _), want, plain in zip(("grad_x", "grad_w", "grad_b"), leaves, wants, plains):
        assert got.dtype == t.dtype
        assert_matches(name, got, want, plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_one_pass_segments_gathered(monkeypatch, dtype, bias):
    """Chunks given as the chosen and rejected slices of whole pairs (DPO's layout; 2 pairs, then 1,
    odd sizes, ignored tokens, one pair all ignored): loss, logp and every gradient against float64,
    and ONE accumulation into the weight gradient per chunk, over all its rows gathered (before:
    one per slice, each reading and writing the whole fp32 accumulator)."""
    n_pairs, seq, h, v = 3, 5, 24, 61
    n = 2 * n_pairs * seq
    x, w, b, y = make_inputs(n, h, v, dtype, bias=bias, ignore=True)
    y.view(2, n_pairs, seq)[:, 1] = -100
    bounds = [(0, 2), (2, 3)]
    chunks = [[slice(a * seq, b * seq), slice((n_pairs + a) * seq, (n_pairs + b) * seq)] for a, b in bounds]
    added = []
    add = flp.WeightGradAccumulator.add
    monkeypatch.setattr(
        flp.WeightGradAccumulator,
        "add",
        lambda acc, g, rows: (added.append(rows.shape[0]), add(acc, g, rows)),
    )

    def loss_fn(k, logp):
        return pair_loss(logp, bounds[k][1] - bounds[k][0], seq)

    loss, logp, gx, gw, gb = fused_linear_logprobs_loss(x, w, y, b, chunks, loss_fn)
    assert added == [4 * seq, 2 * seq]
    check_loss_run((loss, logp, gx, gw, gb), x, w, b, y, lambda lp: pair_loss(lp, n_pairs, seq))
    assert (logp.view(2, n_pairs, seq)[:, 1] == 0).all()


class NewBuffers(TorchDispatchMode):
    """Bytes of every new storage of at least ``threshold`` bytes that an op allocates (not the
    CPU-only fp32 copies of matmul operands: ``_to_copy``)."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold, self.sizes = threshold, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not torch.ops.aten._to_copy.default:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            seen = {t.untyped_storage().data_ptr() for t in tensors}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    if t.untyped_storage().nbytes() >= self.threshold:
                        self.sizes.append(t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("input_dtype_logits", [True, False])
def test_one_pass_buffers(monkeypatch, input_dtype_logits):
    """The one-pass engine's memory on a DPO-like chunking (one pair a chunk, given as the chosen
    and rejected slices), bf16, no temperature: the fp32 weight-gradient accumulator (two halves,
    rounded in place: no rounded copy), one pair's logits in bf16 (fp32 with the flag off), the
    input gradient, one buffer for a pair's gathered input rows (reused: one accumulation per chunk into
    each half), nothing else (before: fp32 logits, the rounded weight gradient allocated beside the
    accumulator and the still-referenced logits, a gathered copy of each pair's input rows per chunk)."""
    monkeypatch.setattr(flp, "ONE_PASS_LOGITS_IN_INPUT_DTYPE", input_dtype_logits, raising=False)
    n_pairs, seq, h, v = 2, 16, 64, 1000
    x, w, _, y = make_inputs(2 * n_pairs * seq, h, v, torch.bfloat16)
    chunks = [[slice(p * seq, (p + 1) * seq), slice((n_pairs + p) * seq, (n_pairs + p + 1) * seq)] for p in range(2)]

    def loss_fn(k, logp):
        return -torch.nn.functional.logsigmoid(logp[:seq].sum() - logp[seq:].sum())

    with NewBuffers(threshold=h * seq * 2) as mode:
        loss, _, gx, gw, _ = fused_linear_logprobs_loss(x, w, y, None, chunks, loss_fn)
    logits = 2 * seq * v * (2 if input_dtype_logits else 4)
    expected = [v // 2 * h * 4, v // 2 * h * 4, logits, gx.numel() * 2, 2 * seq * h * 2]
    assert sorted(mode.sizes) == sorted(expected)
    assert gw.dtype == torch.bfloat16 and gw.untyped_storage().nbytes() == v // 2 * h * 4  # the first half's memory


@pytest.mark.parametrize("logits_dtype", [None, torch.bfloat16])
def test_frozen_head_logprobs(logits_dtype):
    """A frozen head's log-probs, fp32 logits or the spec's bf16 ones (then equal to the
    reference in the input dtype up to the kernels' summation order); no autograd."""
    x, w, b, y = make_inputs(37, 24, 301, torch.bfloat16, bias=True, ignore=True)
    logp = frozen_head_logprobs(x, w, y, b, logits_dtype=logits_dtype)
    assert not logp.requires_grad
    x64, w64, b64 = as64(x, w, b)
    spec = fused_linear_logprobs_reference(x, w, y, b)
    assert_matches("logp", logp, fused_linear_logprobs_reference(x64, w64, y, b64), spec)
    if logits_dtype is not None:
        torch.testing.assert_close(logp, spec.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.9, 0.7, 1.3])
def test_temperature_division_is_unbiased(temperature):
    """Logits divided by the temperature are off by their own rounding only: over 2^16 values the
    mean relative error is within 4 standard errors of unbiased rounding (4 eps / sqrt(n), 1.9e-9).
    Multiplying by fp32(1 / T) was off by 4.8e-8 in every value at T = 0.9 (25x that bound): a bias
    that a sequence's sum of log-probs adds up (the H200's VESPO loss was 5.5x its fp32 bound at
    512 tokens). Infinite logits stay infinite."""
    z = randn(1 << 16, scale=4.0)
    exact = z.double() / temperature
    flp.divide_in_place(z, temperature)
    bias = ((z.double() - exact) / exact).mean().abs().item()
    assert bias <= 4 * torch.finfo(torch.float32).eps / (1 << 8), f"mean relative error {bias:.2e}"
    inf = torch.tensor([float("inf"), -float("inf"), 1.0], device=DEVICE)
    assert flp.divide_in_place(inf, temperature)[:2].isinf().all()


def batch_loss(logp, n_seq):
    """A loss coupling every sequence, as DPO's bco_pair does: a shift by the (detached) mean."""
    per_seq = logp.view(n_seq, -1).sum(-1)
    return -torch.nn.functional.logsigmoid(per_seq - per_seq.mean().detach()).sum()


@pytest.mark.parametrize(
    "shape", [(10, 16, 53), (32, 16, 61), (33, 16, 53), (13, 13, 29)], ids=["N<H", "N=2H", "N>H odd", "N=H odd"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_batch_loss_matches_float64(monkeypatch, shape, dtype, bias):
    """The whole-batch route (logits kept vocabulary-major, rows padded to 8 items, the weight
    gradient written over them, partly through the staging temporary, partly directly; the head
    alone or with a tail): loss, logp and every gradient against
    float64, ignored tokens and an all-ignored sequence; a frozen head of the same values through
    ``batch_frozen_logprobs`` gives the same log-probs exactly."""
    n, h, v = shape
    monkeypatch.setattr(flp, "WEIGHT_GRAD_STAGE_BYTES", 3 * h * (2 if dtype == torch.bfloat16 else 4))
    monkeypatch.setattr(flp, "STATS_ROWS_PER_PROGRAM", 16)
    x, w, b, y = make_inputs(n, h, v, dtype, bias=bias, ignore=True)
    n_seq = {10: 2, 32: 4, 33: 3, 13: 13}[n]
    y[: n // n_seq] = -100
    loss, logp, gx, gw, gb = flp.fused_linear_logprobs_batch_loss(x, w, y, b, lambda lp: batch_loss(lp, n_seq))
    check_loss_run((loss, logp, gx, gw, gb), x, w, b, y, lambda lp: batch_loss(lp, n_seq))
    assert (logp[: n // n_seq] == 0).all()
    assert torch.equal(flp.batch_frozen_logprobs(x, w, y, b), logp)


def test_batch_loss_buffers():
    """The whole-batch route's memory at N = 2H in bf16: the logits [V, N] in two parts (the first
    exactly the weight gradient's size, which becomes it), the input gradient (in fp32 while the
    two parts add up), the staging temporary, nothing else: no fp32 [V, H] accumulator."""
    n, h, v = 64, 32, 1001
    x, w, _, y = make_inputs(n, h, v, torch.bfloat16)
    with NewBuffers(threshold=n * h * 2) as mode:
        _, _, gx, gw, _ = flp.fused_linear_logprobs_batch_loss(x, w, y, None, lambda lp: batch_loss(lp, 4))
    in_head = v * h // n
    stage = min(in_head, flp.WEIGHT_GRAD_STAGE_BYTES // (h * 2)) * h * 2
    assert sorted(mode.sizes) == sorted([v * h * 2, (v - in_head) * n * 2, n * h * 4, stage])  # (+ the rounded gx)
    assert gw.dtype == torch.bfloat16 and gw.untyped_storage().nbytes() == v * h * 2 and gw._base is None


def test_batch_loss_bad_label():
    x, w, _, y = make_inputs(6, 8, 11, torch.float32)
    y[2] = 11
    with pytest.raises(ValueError, match="label"):
        flp.fused_linear_logprobs_batch_loss(x, w, y, None, lambda lp: lp.sum())
    with pytest.raises(ValueError, match="label"):
        flp.batch_frozen_logprobs(x, w, y)
