"""torch.compile for the JSD family (``ops/library_jsd.py``): each op passes ``opcheck``; under
compile the modules and functionals route to it, so they compile with ``fullgraph=True`` (no
graph break) and give the eager loss and gradients, ``dynamic=True`` too."""

import pytest
import torch
from parity import DEVICE, randn
from test_compile import BACKEND, TOLERANCE, assert_compiled_matches_eager, opcheck_kernels_and_reference

from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
from liger_kernel.ops import library, library_jsd
from liger_kernel.transformers import LigerFusedLinearJSD, LigerJSD
from liger_kernel.transformers.functional import liger_fused_linear_jsd, liger_jsd

pytestmark = pytest.mark.skipif(not library.ENABLED, reason="torch without torch.library.custom_op")

N, H, HT, V = 7, 12, 10, 37


def inputs():
    torch.manual_seed(0)
    w = randn(V, H, requires_grad=True, scale=H**-0.5 * 3)
    xt, wt = randn(N, HT), randn(V, HT, scale=HT**-0.5 * 3)
    y = torch.randint(0, V, (N,), device=DEVICE)
    y[2] = -100
    return w, xt, wt, y


def cases():
    w, xt, wt, y = inputs()
    teacher = torch.log_softmax(xt @ wt.T, -1)
    chunked = LigerFusedLinearJSDLoss(beta=0.3, temperature=1.5, chunk_size=3)
    return {
        "jsd": lambda x: LigerJSD(beta=0.3)(torch.log_softmax(x @ w.T, -1), teacher, y),
        "jsd_functional": lambda x: liger_jsd(torch.log_softmax(x @ w.T, -1), teacher, None, 0.0),
        "fused_linear_jsd": lambda x: LigerFusedLinearJSD(jsd_beta=0.7, temperature=1.5)(x, w, xt, wt, y),
        "fused_linear_jsd_functional": lambda x: liger_fused_linear_jsd(x, w, xt, wt, None, 1.0),
        "jsd_distillation": lambda x: chunked(x, w, xt, wt, y) * 3.0,
    }


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", list(cases()))
def test_op_under_compile_matches_eager(name, dynamic):
    assert_compiled_matches_eager(cases()[name], randn(N, H, requires_grad=True), dynamic)


def test_weight_gradients_under_compile():
    """The heads' gradients too (the fused ops return them from the forward)."""
    w, xt, wt, y = inputs()
    wt.requires_grad_()
    x = randn(N, H, requires_grad=True)
    module = LigerFusedLinearJSD(jsd_beta=0.4)
    fn = lambda x: module(x, w, xt, wt, y)  # noqa: E731
    eager = torch.autograd.grad(fn(x), [x, w, wt])
    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(fn, backend=BACKEND, fullgraph=True)(x), [x, w, wt])
    torch.testing.assert_close(compiled, eager, **TOLERANCE)


def opcheck_cases():
    """(op, arguments): every forward op with inputs that need gradients, the backward op on plain tensors."""
    w, xt, wt, y = inputs()
    x = randn(N, H, requires_grad=True)
    b = randn(V, requires_grad=True)
    log_q = torch.log_softmax(randn(N, V), -1).requires_grad_()
    log_p = torch.log_softmax(randn(N, V), -1).requires_grad_()
    return {
        "jsd": (library_jsd.jsd, (log_q, log_p, y, 0.3, -100)),
        "jsd_no_labels": (library_jsd.jsd, (log_q, log_p, None, 1.0, -100)),
        "jsd_backward": (
            library_jsd.jsd_backward,
            (torch.ones((), device=DEVICE), log_q.detach(), log_p.detach(), y, 0.3, -100, True, True),
        ),
        "fused_linear_jsd": (
            library_jsd.fused_linear_jsd,
            (x, w, xt, wt.requires_grad_(), y, 0.3, -100, 1.5, None, None, True, True, False, True),
        ),
        "fused_linear_jsd_distillation": (
            library_jsd.fused_linear_jsd_distillation,
            (x, w, xt, wt.detach(), y, b, None, 0.5, 0.5, 0.3, -100, 1.5, 3, True, True, True),
        ),
    }


@pytest.mark.parametrize("name", list(opcheck_cases()))
def test_opcheck(name, monkeypatch):
    """The kernels (on the GPU, or the CPU under the interpreter), then the reference."""
    opcheck_kernels_and_reference(*opcheck_cases()[name], monkeypatch)


def test_eager_calls_keep_the_functions():
    """Outside compile the modules call the Functions, not the custom ops."""
    w, xt, wt, y = inputs()
    loss = LigerFusedLinearJSDLoss()(randn(N, H, requires_grad=True), w, xt, wt, y)
    assert type(loss.grad_fn).__name__ == "LigerFusedLinearJSDFunctionBackward"
