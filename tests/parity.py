"""One parity harness for every op: compare a kernel's result with a float64 reference, using
the error PyTorch itself makes in the same dtype as the yardstick."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Error floor, relative to the largest reference magnitude: a few units of rounding of the dtype.
FLOOR = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def sizes(cpu, gpu):
    """Small odd shapes for the interpreter, realistic ones on a GPU."""
    return gpu if ON_GPU else cpu


def randn(*shape, dtype=torch.float32, requires_grad=False, scale=1.0):
    t = torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale
    return t.to(dtype).requires_grad_(requires_grad)


def as64(*tensors):
    """Detached float64 copies that require grad where the original did."""
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def assert_matches(name, actual, reference, baseline=None, factor=2.0, floor=None):
    """``actual`` against the float64 ``reference``: its largest error must be at most
    ``factor`` times the error of ``baseline`` (PyTorch in the same dtype) plus a floor of
    ``FLOOR[dtype] * max|reference|``. NaN or Inf where the reference is finite always fails."""
    assert actual is not None, f"{name}: no result"
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    ref = reference.detach().double()
    act = actual.detach().double()
    finite = torch.isfinite(ref)
    assert torch.isfinite(act[finite]).all(), f"{name}: NaN/Inf where the reference is finite (unwritten output?)"
    if ref.numel() == 0:
        return
    scale = ref[finite].abs().max().item() if finite.any() else 0.0
    floor = FLOOR[actual.dtype] if floor is None else floor
    bound = floor * max(scale, 1e-30)
    if baseline is not None:
        bound += factor * (baseline.detach().double() - ref)[finite].abs().max().item()
    err = (act - ref)[finite].abs().max().item()
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} (scale {scale:.3e}, {actual.dtype})"
