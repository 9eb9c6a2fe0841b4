"""``ops.utils.launch``: after a signature's first launch through Triton, the compiled kernel's launcher
is called directly. The key must never pick a compiled kernel other than the one Triton itself picks.

On the CPU, Triton's real ``JITFunction.run`` (binding, specialization, cache) runs against a
stand-in CUDA driver whose compiled kernels record their launches; on a GPU, the real kernels."""

import itertools

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import driver
from triton.runtime.jit import JITFunction
from triton_stand_in import StandInDriver, compiled_kernel

import liger_kernel.ops.utils as ops_utils
from liger_kernel.ops.layer_norm import LigerLayerNormFunction
from liger_kernel.ops.rms_norm import LigerRMSNormFunction
from liger_kernel.ops.swiglu import LigerSiLUMulFunction

ON_GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not ops_utils._KNOWN_LAUNCHER, reason="a Triton whose launcher was not read")


def _scale(X, Y, n, stride, alpha, FLAG: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs * stride, mask=offs < n)
    tl.store(Y + offs, x * alpha if FLAG else x, mask=offs < n)


def _scale_with_default(X, Y, n, stride, alpha, FLAG: tl.constexpr, BLOCK: tl.constexpr, shift=0):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs * stride, mask=offs < n) + shift, mask=offs < n)


class _Recorder:
    """Stand-in for Triton's compiled kernels: each new specialization gets its own, which
    records its launches."""

    def __init__(self, backend):
        self.backend, self.launches = backend, []

    def compile(self, jit_fn, key, signature, device, *rest):
        compiled = compiled_kernel(jit_fn, key, device, self.backend)
        compiled.run = lambda *args: self.launches.append((compiled, args[:3], args[9:]))
        return compiled


@pytest.fixture
def stand_in(monkeypatch):
    """A JIT kernel (whatever TRITON_INTERPRET says) launched through a stand-in CUDA driver."""

    def make(backend="cuda", fn=_scale):
        recorder = _Recorder(backend)
        kernel = JITFunction(fn)
        monkeypatch.setattr(kernel, "_do_compile", lambda *args: recorder.compile(kernel, *args))
        return kernel, recorder

    monkeypatch.setattr(driver, "_active", StandInDriver())
    monkeypatch.setattr(ops_utils, "_DIRECT", True)
    monkeypatch.setattr(ops_utils, "_COMPILED", {})
    return make


def _signatures():
    """Argument sets that differ in what Triton specializes on, and in what it does not."""
    base = torch.zeros(64)
    out = torch.zeros(64)
    for x in (base, base[1:], base[4:], base.half(), base.bfloat16()):  # dtype, 16-byte alignment
        for n in (1, 16, 17, 32, 2**31, 2**40):  # 1, multiples of 16, 64 bits
            for flag in (True, False):
                yield (x, out), (n, 1, 0.5, flag, 32)
    yield (base, out), (17, 3, 2.0, True, 32)  # only values Triton does not specialize on changed
    yield (base, out), (17, 3, 2.0, True, 64)  # a constexpr changed


@pytest.mark.skipif(not hasattr(JITFunction, "_do_compile"), reason="Triton without JITFunction._do_compile")
def test_direct_launch_uses_the_kernel_triton_picks(stand_in):
    kernel, recorder = stand_in()
    for device, (tensors, scalars), num_warps in itertools.product((0, 1), _signatures(), (4, 8)):
        driver.active.get_current_device = lambda device=device: device  # the current device, as Triton reads it
        grid = (3,)
        kernel[grid](*tensors, *scalars, num_warps=num_warps)
        picked = recorder.launches[-1][0]
        ops_utils.launch(kernel, grid, tensors, scalars, num_warps)  # first: through Triton
        ops_utils.launch(kernel, grid, tensors, scalars, num_warps)  # then: direct
        first, direct = recorder.launches[-2:]
        assert first[0] is picked and direct[0] is picked
        assert direct[1] == (3, 1, 1) and direct[2] == (*tensors, *scalars)
    assert len({id(c) for c, _, _ in recorder.launches}) > 100  # so many specializations, each its own


def test_direct_launch_skips_triton_after_the_first(stand_in, monkeypatch):
    kernel, recorder = stand_in()
    calls = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: calls.append(1) or run(*args, **kwargs))
    tensors, scalars = (torch.zeros(8), torch.zeros(8)), (8, 1, 1.0, True, 8)
    for _ in range(3):
        ops_utils.launch(kernel, (2, 3), tensors, scalars, 4)
    assert len(calls) == 1 and len(recorder.launches) == 3
    assert recorder.launches[-1][1] == (2, 3, 1)


@pytest.mark.parametrize("case", ["other backend", "pre-run hook", "default argument"])
def test_launches_through_triton_where_it_does_more(case, stand_in, monkeypatch):
    backend = "hip" if case == "other backend" else "cuda"
    kernel, recorder = stand_in(backend, _scale_with_default if case == "default argument" else _scale)
    if case == "pre-run hook":
        if not hasattr(kernel, "pre_run_hooks"):
            pytest.skip("Triton without pre-run hooks")
        kernel.pre_run_hooks.append(lambda *args, **kwargs: None)
    calls = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *args, **kwargs: calls.append(1) or run(*args, **kwargs))
    tensors, scalars = (torch.zeros(8), torch.zeros(8)), (8, 1, 1.0, True, 8)
    for _ in range(3):
        ops_utils.launch(kernel, (2,), tensors, scalars, 4)
    assert len(calls) == 3 and len(recorder.launches) == 3


def _fwd_bwd(op, dtype, offset):
    """Outputs and gradients of one op call on inputs starting ``offset`` elements into a buffer
    (misaligned for Triton when offset * itemsize is not a multiple of 16)."""
    torch.manual_seed(0)
    rows, hidden = 7, 96
    x = torch.randn(rows * hidden + offset, device="cuda", dtype=dtype)[offset:].view(rows, hidden)
    x.requires_grad_()
    w = torch.randn(hidden, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(hidden, device="cuda", dtype=dtype, requires_grad=True)
    if op == "layer_norm":
        inputs, y = (x, w, b), LigerLayerNormFunction.apply(x, w, b, 1e-6)
    elif op == "rms_norm":
        inputs, y = (x, w), LigerRMSNormFunction.apply(x, w, 1e-6)
    else:
        inputs, y = (x, b.expand(rows, hidden).contiguous()), None
        y = LigerSiLUMulFunction.apply(*inputs)
    grads = torch.autograd.grad(y, [t for t in inputs if t.requires_grad], torch.randn_like(y))
    return (y, *grads)


@pytest.mark.skipif(not ON_GPU, reason="the direct launcher runs on a CUDA GPU")
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "swiglu"])
def test_direct_launch_on_gpu_matches_triton(op, monkeypatch):
    monkeypatch.setattr(ops_utils, "_COMPILED", {})
    through_triton = []
    run = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda *args, **kwargs: through_triton.append(1) or run(*args, **kwargs))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for offset in (0, 1, 8):  # aligned, misaligned, aligned for 2-byte dtypes only
            monkeypatch.setattr(ops_utils, "_DIRECT", False)
            expected = _fwd_bwd(op, dtype, offset)
            monkeypatch.setattr(ops_utils, "_DIRECT", True)
            first = _fwd_bwd(op, dtype, offset)
            through_triton.clear()
            direct = _fwd_bwd(op, dtype, offset)
            assert not through_triton, "a launch of a signature seen before went through Triton"
            for e, f, d in zip(expected, first, direct):
                assert torch.equal(e, f) and torch.equal(e, d)
    compiled = [entry[1] for entry in ops_utils._COMPILED.values()]
    assert compiled and all(c is not None for c in compiled), "every CUDA kernel takes the direct launcher"
    assert triton.runtime.driver.active.get_current_target().backend == "cuda"
