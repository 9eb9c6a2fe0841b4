"""One parity harness for every op: compare a kernel's result with a float64 reference, using
the error PyTorch itself makes in the same dtype as the yardstick."""

import math

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


def assert_matches(name, actual, reference, baseline=None, factor=2.0, floor=None, atol=0.0):
    """``actual`` against the float64 ``reference``: its largest error must be at most
    ``factor`` times the error of ``baseline`` (PyTorch in the same dtype) plus a floor of
    ``FLOOR[dtype] * max|reference|`` plus ``atol``. NaN or Inf where the reference is finite always fails."""
    failure = mismatch(name, actual, reference, baseline, factor, floor, atol)[1]
    assert failure is None, failure


def mismatch(name, actual, reference, baseline=None, factor=2.0, floor=None, atol=0.0) -> tuple:
    """``assert_matches``'s judgement: (the largest error over its bound, infinite for no result, a
    wrong shape or NaN where the reference is finite; the failure's message, None if it passes)."""
    if actual is None:
        return math.inf, f"{name}: no result"
    if actual.shape != reference.shape:
        return math.inf, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    ref = reference.detach().double()
    act = actual.detach().double()
    finite = torch.isfinite(ref)
    if not torch.isfinite(act[finite]).all():
        return math.inf, f"{name}: NaN/Inf where the reference is finite (unwritten output?)"
    if ref.numel() == 0:
        return 0.0, None
    scale = ref[finite].abs().max().item() if finite.any() else 0.0
    floor = FLOOR[actual.dtype] if floor is None else floor
    bound = floor * max(scale, 1e-30) + atol
    if baseline is not None:
        bound += factor * (baseline.detach().double() - ref)[finite].abs().max().item()
    err = (act - ref)[finite].abs().max().item()
    over = err / bound if bound else math.inf if err else 0.0
    if err <= bound:
        return over, None
    return over, f"{name}: max error {err:.3e} > bound {bound:.3e} (scale {scale:.3e}, {actual.dtype})"


def check_rotation(apply, reference, q, k, args, args64):
    """``apply(q, k, *args)`` (a RoPE-like op returning new q and k) against ``reference(q, k,
    *args64)`` in float64, outputs and q/k gradients for random upstream gradients, with the
    reference in q's dtype as the yardstick. Returns ``(outputs, gradients)``."""
    dq_out, dk_out = randn(*q.shape, dtype=q.dtype), randn(*k.shape, dtype=k.dtype)
    q64, k64 = as64(q, k)
    out64 = reference(q64, k64, *args64)
    grads64 = torch.autograd.grad(out64, (q64, k64), (dq_out.double(), dk_out.double()))
    qt, kt = (x.detach().clone().requires_grad_() for x in (q, k))
    base = reference(qt, kt, *args)
    base_grads = torch.autograd.grad(base, (qt, kt), (dq_out, dk_out))
    out = apply(q, k, *args)
    grads = torch.autograd.grad(out, (q, k), (dq_out, dk_out))
    for name, a, r, bl in zip(("q_out", "k_out", "dq", "dk"), (*out, *grads), (*out64, *grads64), (*base, *base_grads)):
        assert_matches(name, a, r, bl)
    return out, grads
