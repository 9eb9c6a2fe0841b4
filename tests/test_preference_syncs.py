"""The one-pass preference engine never waits for the GPU per chunk of pairs: its host
synchronizations do not grow with the number of pairs (a per-chunk wait idled the H200 for ~8 ms
of a 62 ms DPO step). GPU only: CUDA's sync debug mode counts them."""

import warnings

import pytest
import torch

from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA host synchronizations")


def _syncs(n_pairs):
    torch.manual_seed(0)
    T, H, V = 33, 64, 257
    x = torch.randn(2 * n_pairs, T, H, device="cuda", requires_grad=True)
    w = torch.randn(V, H, device="cuda", requires_grad=True)
    y = torch.randint(0, V, (2 * n_pairs, T), device="cuda")
    loss_fn = LigerFusedLinearDPOLoss(use_ref_model=True)
    ref = dict(ref_input=x.detach() + 0.1, ref_weight=w.detach())
    loss_fn(w, x, y, **ref)[0].backward()  # compiles the kernels first
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss_fn(w, x, y, **ref)[0].backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(c.message) for c in caught)


@pytest.mark.xfail(
    strict=True,
    reason="H200, 2026-11-30: 2 synchronizations at 1 and 2 one-pair chunks, 3 at 5 (one more, not one per "
    "chunk: the per-chunk wait this test was written for is gone); the extra one is not found yet",
)
def test_host_syncs_do_not_grow_with_pairs(monkeypatch):
    """Two and five chunks of one pair (the one-pass route: the batch is over the whole-batch route's
    size) wait for the GPU as often."""
    import liger_kernel.chunked_loss.fused_linear_preference as engine

    monkeypatch.setattr(engine, "ONE_PASS_BUDGET_BYTES", 2 * 33 * 257 * 4)  # one pair per chunk
    assert _syncs(5) == _syncs(2)
