"""torch.compile for the divergence and GRPO losses (``ops/library_losses.py``) and the fused linear
cross-entropy's ``reduction="none"``: each op passes ``opcheck``; under compile the modules and
functionals route to it, so they compile with ``fullgraph=True`` (no graph break) and give the
eager loss and gradients, ``dynamic=True`` too."""

import pytest
import torch
from parity import DEVICE, randn
from test_compile import BACKEND, TOLERANCE, assert_compiled_matches_eager, opcheck_kernels_and_reference

from liger_kernel.ops import library, library_losses
from liger_kernel.ops.grpo_loss import fused_selective_log_softmax
from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
from liger_kernel.transformers.functional import liger_fused_linear_kl_div, liger_kl_div, liger_tvd
from liger_kernel.transformers.fused_ce_tvd import LigerFusedCETVDLoss
from liger_kernel.transformers.fused_linear_kl_div import LigerFusedLinearKLDivLoss
from liger_kernel.transformers.grpo_loss import triton_grpo_loss
from liger_kernel.transformers.kl_div import LigerKLDIVLoss
from liger_kernel.transformers.tvd import LigerTVDLoss

pytestmark = pytest.mark.skipif(not library.ENABLED, reason="torch without torch.library.custom_op")

N, H, V = 6, 8, 11  # N tokens = B x T = 2 x 3 for GRPO
B, T = 2, 3


def inputs():
    torch.manual_seed(0)
    w = randn(V, H, requires_grad=True, scale=H**-0.5 * 2)
    teacher = torch.softmax(randn(N, V), -1)
    y = torch.randint(0, V, (N,), device=DEVICE)
    y[2] = -100
    grpo = dict(old=randn(B, T) - 2.5, ref=randn(B, T) - 2.5, advantages=randn(B), mask=torch.ones(B, T, device=DEVICE))
    grpo["mask"][1, 2] = 0
    return w, teacher, y, grpo


def _grpo(x, w, grpo, ids, **options):
    logits = (x @ w.T).reshape(B, T, V)
    loss, kl, clip = triton_grpo_loss(
        logits, grpo["old"], grpo["ref"], ids, grpo["advantages"], grpo["mask"], temperature=0.7, **options
    )
    return loss.sum() + (kl.sum() * 0.5 if kl is not None and kl.requires_grad else 0)


def cases():
    w, teacher, y, grpo = inputs()
    ids = y.clamp(min=0).reshape(B, T)
    log_q = lambda x: torch.log_softmax(x @ w.T, -1)  # noqa: E731
    return {
        "kl_div": lambda x: LigerKLDIVLoss(reduction="batchmean")(log_q(x), teacher),
        "kl_div_log_target_none": lambda x: (
            liger_kl_div(log_q(x), teacher.log(), reduction="none", log_target=True) * teacher
        ).sum(),
        "tvd": lambda x: LigerTVDLoss()(torch.softmax(x @ w.T, -1), teacher, y),
        "tvd_none": lambda x: (liger_tvd(torch.softmax(x @ w.T, -1), teacher, reduction="none") * teacher).sum(),
        "fused_ce_tvd": lambda x: sum(c * s for c, s in zip(LigerFusedCETVDLoss()(x @ w.T, teacher.log(), y), (1, 3))),
        "fused_ce_tvd_ce_only": lambda x: LigerFusedCETVDLoss()(x @ w.T, teacher.log(), y)[0],
        "fused_linear_kl_div": lambda x: LigerFusedLinearKLDivLoss(temperature=1.5)(x, w, teacher, y) * 3.0,
        "fused_linear_kl_div_none": lambda x: (
            liger_fused_linear_kl_div(x, w, teacher, reduction="none") * torch.arange(N, device=DEVICE)
        ).sum(),
        "flce_none": lambda x: (
            LigerFusedLinearCrossEntropyLoss(reduction="none")(w, x, y) * torch.arange(N, device=DEVICE)
        ).sum(),
        "grpo_loss": lambda x: _grpo(x, w, grpo, ids, reduce=True, loss_type="grpo"),
        "grpo_loss_per_token": lambda x: _grpo(x, w, grpo, ids, reduce=False, loss_type="dapo"),
        "grpo_loss_vespo": lambda x: _grpo(x, w, grpo, ids, reduce=True, loss_type="vespo", beta=0.0),
        "selective_log_softmax": lambda x: (
            fused_selective_log_softmax((x @ w.T).reshape(B, T, V), ids, 0.7, grpo["mask"]) * grpo["old"]
        ).sum(),
    }


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", list(cases()))
def test_op_under_compile_matches_eager(name, dynamic):
    assert_compiled_matches_eager(cases()[name], randn(N, H, requires_grad=True), dynamic)


def test_weight_and_target_gradients_under_compile():
    """The head's and the target's gradients too (a target that needs a gradient defers them to the backward op)."""
    w, teacher, y, _ = inputs()
    teacher.requires_grad_()
    x = randn(N, H, requires_grad=True)
    fn = lambda x: LigerFusedLinearKLDivLoss()(x, w, teacher, y) + LigerTVDLoss()(teacher, teacher.flip(0))  # noqa: E731
    eager = torch.autograd.grad(fn(x), [x, w, teacher])
    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(fn, backend=BACKEND, fullgraph=True)(x), [x, w, teacher])
    torch.testing.assert_close(compiled, eager, **TOLERANCE)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_token_accuracy_and_predictions_under_compile(reduction, fused):
    """The cross-entropies' token accuracy and predicted tokens (the generic forward's
    ``return_token_accuracy`` / ``return_predicted_tokens``) come out of their custom ops: one graph,
    the eager values, and the eager gradients beside them."""
    from test_compile import _no_graph_breaks

    from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy

    w, _, y, _ = inputs()
    x = randn(N, H, requires_grad=True)
    weights = torch.arange(N, device=DEVICE) if reduction == "none" else 1
    options = dict(reduction=reduction, return_token_accuracy=True, return_predicted_tokens=True)

    def fn(x):
        if fused:
            out = liger_fused_linear_cross_entropy(x, w, y, **options)
        else:
            out = liger_cross_entropy(x @ w.T, y, **options)
        return (out.loss * weights).sum(), out.token_accuracy, out.predicted_tokens

    eager = fn(x)
    eager_grads = torch.autograd.grad(eager[0], [x, w])
    _no_graph_breaks(lambda x: sum(fn(x)[:2]), x)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=BACKEND, fullgraph=True)(x)
    compiled_grads = torch.autograd.grad(compiled[0], [x, w])
    torch.testing.assert_close(compiled[:2], eager[:2], **TOLERANCE)
    assert torch.equal(compiled[2], eager[2]) and compiled[2].dtype == torch.int64
    torch.testing.assert_close(compiled_grads, eager_grads, **TOLERANCE)


def opcheck_cases():
    """(op, arguments): every forward op with inputs that need gradients, the backward ops on plain tensors."""
    w, teacher, y, grpo = inputs()
    x = randn(N, H, requires_grad=True)
    log_q = torch.log_softmax(randn(N, V), -1).requires_grad_()
    p, q = torch.softmax(randn(N, V), -1).requires_grad_(), teacher.clone().requires_grad_()
    ids = y.clamp(min=0).reshape(B, T)
    logits = randn(B, T + 1, V, requires_grad=True)
    one = torch.ones((), device=DEVICE)
    stats = library_losses.fused_ce_tvd(p.detach(), q.detach(), y, -100)[2]
    lse = library_losses.selective_log_softmax(logits.detach(), ids, 0.7, None)[1]
    grpo_tensors = (grpo["old"], grpo["ref"], ids, grpo["advantages"], grpo["mask"], None, None, None)
    grpo_options = (0.7, 0.04, 0.2, 0.3, "grpo", None, False, "token", 1.0, 1.05, None, False)
    flce = (x, w, y, None, None, -100, 0.0, 0.0, "none", None, False, None, False, None, None, 1.0, None)
    return {
        "kl_div": (library_losses.kl_div, (log_q, q, "batchmean", False, 1e-10)),
        "kl_div_none": (library_losses.kl_div, (log_q, q.log().detach(), "none", True, 1e-10)),
        "kl_div_backward": (
            library_losses.kl_div_backward,
            (one, log_q.detach(), q.detach(), "mean", False, 1e-10, True, True),
        ),
        "tvd": (library_losses.tvd, (p, q, y, "mean", -100)),
        "tvd_backward": (
            library_losses.tvd_backward,
            (randn(N, V), p.detach(), q.detach(), y, "none", -100, True, False),
        ),
        "fused_ce_tvd": (library_losses.fused_ce_tvd, (p, q, y, -100)),
        "fused_ce_tvd_backward": (
            library_losses.fused_ce_tvd_backward,
            (one, one * 0.5, p.detach(), q.detach(), y, stats, -100, True, True),
        ),
        "fused_linear_kl_div": (
            library_losses.fused_linear_kl_div,
            (x, w, teacher, y, "batchmean", -100, 1.5, 1e-10, None, True, True, False),
        ),
        "fused_linear_kl_div_backward": (
            library_losses.fused_linear_kl_div_backward,
            (randn(N), x.detach(), w.detach(), teacher, None, "none", -100, 1.0, 1e-10, None, True, True, True),
        ),
        "flce_none": (library.fused_linear_cross_entropy, (*flce, False, False, True, True, False)),
        "flce_none_predictions": (library.fused_linear_cross_entropy, (*flce, True, True, True, True, False)),
        "flce_token_grads": (
            library.fused_linear_cross_entropy_token_grads,
            (randn(N), x.detach(), w.detach(), y, None, None, -100, 0.0, 0.1, None, None, False, None, None, 1.0)
            + (True, True, False),
        ),
        "grpo_loss": (library_losses.grpo_loss, (logits, *grpo_tensors, *grpo_options)),
        "grpo_loss_backward": (
            library_losses.grpo_loss_backward,
            (randn(B, T), randn(B, T), logits.detach(), *grpo_tensors, *grpo_options),
        ),
        "selective_log_softmax": (library_losses.selective_log_softmax, (logits, ids, 0.7, grpo["mask"])),
        "selective_log_softmax_backward": (
            library_losses.selective_log_softmax_backward,
            (randn(B, T), logits.detach(), ids, lse, 0.7, None),
        ),
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_opcheck(name, monkeypatch):
    """The kernels (on the GPU, or the CPU under the interpreter), then the reference."""
    opcheck_kernels_and_reference(*opcheck_cases()[name], monkeypatch)


@pytest.mark.parametrize(
    "module, call",
    [
        (LigerKLDIVLoss, lambda m, a, b: m()(a, b)),
        (LigerTVDLoss, lambda m, a, b: m()(a, b)),
        (LigerFusedCETVDLoss, lambda m, a, b: m()(a, b, torch.zeros(N, dtype=torch.long, device=DEVICE))[0]),
    ],
)
def test_eager_calls_keep_the_functions(module, call):
    """Outside compile the modules call the Functions, not the custom ops."""
    a = torch.softmax(randn(N, V), -1).requires_grad_()
    loss = call(module, a, a.detach().flip(0))
    assert type(loss.grad_fn).__name__.startswith("Liger")
