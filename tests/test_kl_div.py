import warnings

import pytest
import torch
import torch.nn.functional as F
from divergence_cases import check_parity, copies, distributions, run
from parity import DEVICE, DTYPES, assert_matches, sizes

from liger_kernel.ops.kl_div import LigerKLDivLossFunction, kl_div_reference
from liger_kernel.transformers import LigerKLDIVLoss
from liger_kernel.transformers.functional import liger_kl_div

# odd rows and a vocabulary narrower than a block; a row just past 2048 columns; a 3-D batch
SHAPES = sizes(cpu=[(7, 37), (3, 2049), (2, 3, 45)], gpu=[(4096, 32000), (1024, 128256), (8, 511, 4099)])
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def kl_inputs(shape, dtype, log_target, target_dtype=None):
    y_pred = distributions(shape, dtype, log=True)
    y_true = distributions(shape, target_dtype or dtype, log=log_target, scale=1.0)
    return y_pred, y_true


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_parity(shape, dtype, reduction, log_target):
    y_pred, y_true = kl_inputs(shape, dtype, log_target)
    check_parity(
        "kl_div",
        lambda x, t: LigerKLDivLossFunction.apply(x, t, reduction, log_target),
        lambda x, t: kl_div_reference(x, t, reduction, log_target),
        [y_pred, y_true],
        dtype,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_reference_is_torch_kl_div(reduction, log_target):
    """The spec agrees with F.kl_div (float64; targets with exact zeros, where xlogy gives 0)."""
    y_pred, y_true = kl_inputs((5, 33), torch.float64, log_target)
    if not log_target:
        y_true = torch.where(torch.rand_like(y_true) < 0.2, 0.0, y_true.detach()).requires_grad_()
    ref, upstream, ref_grads = run(lambda x, t: kl_div_reference(x, t, reduction, log_target), [y_pred, y_true])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # F.kl_div's note on reduction="mean"
        torch_out, _, torch_grads = run(
            lambda x, t: F.kl_div(x, t, reduction=reduction, log_target=log_target), [y_pred, y_true], upstream
        )
    torch.testing.assert_close(ref, torch_out)
    torch.testing.assert_close(ref_grads[0], torch_grads[0])
    finite = torch.isfinite(torch_grads[1])  # d/dt of xlogy(t, t) is -inf at t = 0; ours is bounded by eps
    torch.testing.assert_close(ref_grads[1][finite], torch_grads[1][finite])


def test_mixed_dtypes_promote_like_torch():
    """bf16 log-probabilities against fp32 targets: an fp32 loss, each gradient in its input's dtype."""
    y_pred, y_true = kl_inputs((7, 37), torch.bfloat16, False, target_dtype=torch.float32)
    check_parity(
        "kl_div",
        lambda x, t: LigerKLDivLossFunction.apply(x, t, "batchmean"),
        lambda x, t: kl_div_reference(x, t, "batchmean"),
        [y_pred, y_true],
        torch.float32,
    )


def test_module_is_kl_div_loss():
    """LigerKLDIVLoss is an nn.KLDivLoss: the parent's arguments and its default reduction ("mean")."""
    loss_fn = LigerKLDIVLoss(reduction="batchmean", log_target=True)
    assert isinstance(loss_fn, torch.nn.KLDivLoss)
    assert (loss_fn.reduction, loss_fn.log_target, loss_fn.eps) == ("batchmean", True, 1e-10)
    assert LigerKLDIVLoss().reduction == "mean"
    y_pred, y_true = kl_inputs((7, 37), torch.float32, True)
    expected = F.kl_div(y_pred.double(), y_true.double(), reduction="batchmean", log_target=True)
    assert_matches("module", loss_fn(y_pred, y_true), expected)


@pytest.mark.parametrize(
    "kwargs, reduction",
    [
        ({}, "mean"),
        ({"reduction": "batchmean"}, "batchmean"),
        ({"reduce": False}, "none"),
        ({"size_average": False}, "sum"),
    ],
)
def test_functional_legacy_arguments(kwargs, reduction):
    """size_average / reduce (default True) decide the reduction only when one of them is False."""
    y_pred, y_true = kl_inputs((7, 37), torch.float32, False)
    out = liger_kl_div(y_pred, y_true, **kwargs)
    assert_matches("functional", out, kl_div_reference(*copies([y_pred, y_true], torch.float64), reduction))


def test_torch_impl_runs_the_reference(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    y_pred, y_true = kl_inputs((7, 37), torch.bfloat16, False)
    out, upstream, grads = run(lambda x, t: LigerKLDivLossFunction.apply(x, t, "sum"), copies([y_pred, y_true]))
    ref, _, ref_grads = run(lambda x, t: kl_div_reference(x, t, "sum"), copies([y_pred, y_true]), upstream)
    assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_empty_input_gives_zero_not_nan():
    y_pred, y_true = kl_inputs((0, 37), torch.float32, False)
    for reduction in ("sum", "mean", "batchmean"):
        out = LigerKLDivLossFunction.apply(y_pred, y_true, reduction)
        assert out.item() == 0.0
        out.backward()


def test_no_grad_and_frozen_target():
    """Under no_grad nothing is kept; a target without grad gets none."""
    y_pred, y_true = kl_inputs((7, 37), torch.float32, False)
    with torch.no_grad():
        out = LigerKLDivLossFunction.apply(y_pred, y_true)
    assert not out.requires_grad
    y_true.requires_grad_(False)
    LigerKLDivLossFunction.apply(y_pred, y_true).backward()
    assert y_pred.grad is not None and y_true.grad is None


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(3, 5), torch.randn(3, 6), "batchmean"), "`y_pred` has shape .* but `y_true` has"),
        (lambda: (torch.randn(3, 5), torch.randn(3, 5), "avg"), "`reduction` must be one of"),
        (lambda: (torch.randn(3, 5), torch.randint(0, 2, (3, 5)), "sum"), "`y_true` must be a float32"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    y_pred, y_true, reduction = make()
    with pytest.raises((ValueError, TypeError), match=match):
        LigerKLDivLossFunction.apply(y_pred.to(DEVICE), y_true.to(DEVICE), reduction)
