"""Test set-up: on a machine without a GPU the Triton kernels run in Triton's interpreter, which
must be chosen before any kernel module is imported; kernel outputs are poisoned with NaN so an
unwritten element fails its comparison."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("LIGER_KERNEL_POISON", "1")


@pytest.fixture
def small_blocks(monkeypatch):
    """Force norm column blocks far narrower than the rows, so the looped paths run on small
    shapes: the backward holds rows of up to 4 x 16 columns in column blocks, and loops over wider
    ones."""
    import liger_kernel.ops.norms as norms

    monkeypatch.setattr(norms, "FWD_MAX_BLOCK", 64)
    monkeypatch.setattr(norms, "BWD_MAX_BLOCK", 16)
    monkeypatch.setattr(norms, "PARTS_MAX_COLS", 64)
    monkeypatch.setattr(norms, "RMS_PART", 16)
    monkeypatch.setattr(norms, "LN_PART", 16)
    monkeypatch.setattr(norms, "TILE", 128)
    monkeypatch.setattr(norms, "_backward_tile", lambda block_n: 2 * block_n)  # 2 rows a tile: several per program
    norms.clear_launch_caches()
    yield
    norms.clear_launch_caches()  # before monkeypatch restores the constants: nothing small stays cached
