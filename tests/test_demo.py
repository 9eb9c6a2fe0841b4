"""The README's first command, `python -m liger_kernel.demo`, at its tiny size: both runs train,
the patched one through our modules, and the per-step losses agree."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from liger_kernel import demo  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_sample_text_ships_with_the_package():
    text = demo.sample_bytes()
    assert 20_000 <= text.numel() <= 50_000
    assert int(text.max()) < 128  # plain ASCII prose: every id is a byte


def test_demo_tiny_matches_stock(capsys):
    steps = 3
    stock, liger = demo.main(["--size", "tiny", "--steps", str(steps), "--device", DEVICE])
    out = capsys.readouterr().out

    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, steps + 1)), out
    assert [float(r[1]) for r in rows] == pytest.approx([round(x, 4) for x in stock.losses], abs=1e-4)
    assert "tokens/s" in out and "peak memory" in out
    if DEVICE == "cuda":
        assert stock.peak_bytes > 0 and liger.peak_bytes > 0

    assert len(stock.losses) == len(liger.losses) == steps
    assert stock.liger_modules == 0, "the stock run must not use our modules (was the patch reverted?)"
    # Every norm (2 per layer + the final one) and every MLP of the patched model is ours.
    layers = demo.SIZES["tiny"][1]
    assert liger.liger_modules >= 3 * layers + 1
    # Untrained, the loss is about ln(vocab); fp32 steps from the same weights on the same batches.
    assert abs(stock.losses[0] - math.log(demo.SIZES["tiny"][5])) < 0.5
    assert liger.losses[0] == pytest.approx(stock.losses[0], rel=1e-5)
    assert liger.losses == pytest.approx(stock.losses, rel=1e-4)
    assert all(math.isfinite(x) for x in liger.losses)
    assert stock.tokens_per_s > 0 and liger.tokens_per_s > 0
