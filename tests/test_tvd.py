import math

import pytest
import torch
from divergence_cases import IGNORE, check_parity, copies, distributions, labels_with_ignored, run
from parity import DEVICE, DTYPES, assert_matches, sizes

from liger_kernel.ops.tvd import LigerTVDLossFunction, tvd_reference
from liger_kernel.transformers import LigerTVDLoss
from liger_kernel.transformers.functional import liger_tvd

SHAPES = sizes(cpu=[(7, 37), (3, 2049), (2, 3, 45)], gpu=[(4096, 32000), (1024, 128256), (8, 511, 4099)])
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def textbook_tvd(p, q, labels, reduction):
    """Half the L1 distance per row, ignored rows dropped, then the reduction over what is left."""
    rows_p, rows_q = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    everything = torch.ones(rows_p.shape[0], dtype=torch.bool, device=p.device)
    keep = everything if labels is None else labels.reshape(-1) != IGNORE
    tvd = 0.5 * (rows_p - rows_q).abs() * keep[:, None]
    if reduction == "none":
        return tvd.view(p.shape)
    count = {"sum": 1, "mean": keep.sum() * p.shape[-1], "batchmean": keep.sum()}[reduction]
    return tvd.sum() / max(int(count), 1)


def check_tvd(shape, dtype, reduction, labels=None):
    p, q = distributions(shape, dtype), distributions(shape, dtype, scale=1.0)
    check_parity(
        "tvd",
        lambda a, b: LigerTVDLossFunction.apply(a, b, labels, reduction),
        lambda a, b: tvd_reference(a, b, labels, reduction),
        [p, q],
        dtype,
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity(shape, dtype, reduction):
    check_tvd(shape, dtype, reduction)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("all_ignored", [False, True], ids=["some-ignored", "all-ignored"])
def test_ignored_rows(dtype, reduction, all_ignored):
    shape = SHAPES[-1]
    labels = labels_with_ignored(math.prod(shape[:-1]), all_ignored=all_ignored).view(shape[:-1])
    check_tvd(shape, dtype, reduction, labels)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_labels", [False, True])
def test_reference_is_the_textbook_distance(reduction, with_labels):
    p, q = distributions((9, 33), torch.float64), distributions((9, 33), torch.float64)
    labels = labels_with_ignored(9) if with_labels else None
    ref, upstream, ref_grads = run(lambda a, b: tvd_reference(a, b, labels, reduction), [p, q])
    book, _, book_grads = run(lambda a, b: textbook_tvd(a, b, labels, reduction), [p, q], upstream)
    torch.testing.assert_close(ref, book)
    for a, b in zip(ref_grads, book_grads):
        torch.testing.assert_close(a, b)


def test_equal_entries_have_zero_gradient():
    """d|u|/du is 0 at 0, as PyTorch's abs."""
    p = distributions((3, 37), torch.float32)
    q = p.detach().clone().requires_grad_()
    LigerTVDLossFunction.apply(p, q, None, "sum").backward()
    assert torch.equal(p.grad, torch.zeros_like(p)) and torch.equal(q.grad, torch.zeros_like(q))


def test_module_and_functional_defaults():
    """The module reduces by "batchmean", the functional by "mean" (their signatures' defaults)."""
    p, q = distributions((7, 37), torch.float32), distributions((7, 37), torch.float32)
    labels = labels_with_ignored(7)
    loss_fn = LigerTVDLoss()
    assert (loss_fn.reduction, loss_fn.ignore_index) == ("batchmean", -100)
    p64, q64 = copies([p, q], torch.float64)
    assert_matches("module", loss_fn(p, q, labels), textbook_tvd(p64, q64, labels, "batchmean"))
    assert_matches("functional", liger_tvd(p, q, labels), textbook_tvd(p64, q64, labels, "mean"))
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        LigerTVDLoss(reduction="avg")


def test_torch_impl_runs_the_reference(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    p, q = distributions((7, 37), torch.bfloat16), distributions((7, 37), torch.bfloat16)
    out, upstream, grads = run(lambda a, b: LigerTVDLossFunction.apply(a, b), copies([p, q]))
    ref, _, ref_grads = run(lambda a, b: tvd_reference(a, b), copies([p, q]), upstream)
    assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_bad_labels_name_the_argument():
    p, q = distributions((7, 37), torch.float32), distributions((7, 37), torch.float32)
    with pytest.raises(ValueError, match="`shift_labels` has 5 labels but the inputs have 7 rows"):
        LigerTVDLossFunction.apply(p, q, torch.zeros(5, dtype=torch.long, device=DEVICE))
