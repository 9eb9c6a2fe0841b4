"""Helpers shared by every op: launch settings, argument checks, output allocation and the
CPU / ``LIGER_KERNEL_IMPL=torch`` fallback to each op's PyTorch reference."""

import contextlib
import functools
import importlib.metadata
import os

import torch
import triton
import triton.language as tl
from torch._vendor.packaging.version import Version  # torch vendors packaging; no extra dependency
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from liger_kernel.utils import infer_device, interpreting, is_npu_available

# Widest row one program holds in registers at once; wider rows are processed in a loop.
MAX_FUSED_SIZE = 65536

torch_to_triton_dtype = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1). Plain Python: ``triton.next_power_of_2`` is a
    constexpr function in recent Triton and costs ~4 us a call on the host, a dozen of which per
    forward+backward showed up in the ops' launch overhead."""
    return 1 << max(int(n) - 1, 0).bit_length()


def is_zero3_partitioned(param) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``param``: it tags each one with ``ds_id`` and
    ``ds_status``, and outside its owner's forward leaves an empty tensor in ``param.data``."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


def cdiv(a: int, b: int) -> int:
    """Ceiling division of ints (host-side twin of ``triton.cdiv``)."""
    return -(-int(a) // int(b))


def calculate_settings(n: int) -> tuple[int, int]:
    """Block size (next power of two of ``n``) and warps for a program that holds one row of ``n``."""
    block_size = next_power_of_2(n)
    if block_size > MAX_FUSED_SIZE:
        raise RuntimeError(
            f"Cannot launch a Triton kernel on rows of {n} elements: the widest row held in one "
            f"block is {MAX_FUSED_SIZE}."
        )
    num_warps = 4
    if block_size >= 32768:
        num_warps = 32
    elif block_size >= 8192:
        num_warps = 16
    elif block_size >= 2048:
        num_warps = 8
    return block_size, num_warps


def ensure_contiguous(fn):
    """Decorator: make every tensor argument of ``fn`` contiguous before the call."""

    @functools.wraps(fn)
    def wrapper(ctx, *args, **kwargs):
        args = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        return fn(ctx, *args, **kwargs)

    return wrapper


def compare_version(package: str, operator, target: str) -> bool:
    """``operator(installed version of package, target)``; False if the package is missing."""
    try:
        installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return operator(Version(installed), Version(target))


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 2-D [rows, H] view with unit column stride and non-overlapping rows, copying only
    when no such view exists (the kernels index rows by one stride and may write into them)."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.stride(-1) != 1 or (t2.shape[0] > 1 and t2.stride(0) < t2.shape[1]):
        t2 = t2.contiguous()
    return t2


# Read once, at import (tests/conftest.py sets it first): an environment lookup per output costs
# microseconds of host time per call.
POISON = os.environ.get("LIGER_KERNEL_POISON") == "1"


def empty_output(shape, like: torch.Tensor, dtype=None, strides=None) -> torch.Tensor:
    """``torch.empty`` (``torch.empty_strided`` with ``strides``) for a kernel's output. With
    ``LIGER_KERNEL_POISON=1`` at import (the tests set it) float outputs are filled with NaN
    first, so an element the kernel fails to write shows."""
    dtype = dtype or like.dtype
    if strides is None:
        out = torch.empty(shape, dtype=dtype, device=like.device)
    else:
        out = torch.empty_strided(shape, strides, dtype=dtype, device=like.device)
    if POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty_like_output(t: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A float tensor of ``t``'s shape, dtype and device for a kernel's output (contiguous, or in
    ``memory_format``: ``torch.preserve_format`` keeps a dense ``t``'s strides), as ``empty_output``
    (NaN-filled under ``LIGER_KERNEL_POISON=1``) with ~2 us less host time (``torch.empty_like``:
    no shape, dtype and device to parse)."""
    out = torch.empty_like(t, memory_format=memory_format)
    return out.fill_(float("nan")) if POISON else out


# ----------------------------------------------------------------------------- kernel launches

# Compiled kernels by launch signature (see ``launch``): ``(kernel, compiled)``, compiled None for
# a signature that launches through Triton every time (see ``_direct_launcher``).
_COMPILED: dict = {}
_MAX_COMPILED = 4096
# The launcher's calling convention below is read from Triton 3.3 to 3.9; another version
# launches through Triton every time.
_KNOWN_LAUNCHER = (3, 3) <= Version(triton.__version__).release[:2] <= (3, 9)
_DIRECT = _KNOWN_LAUNCHER and not interpreting()
# Where Triton keeps the launch hooks it passes to a kernel's launcher: ``triton.knobs.runtime``
# from Triton 3.4, ``CompiledKernel`` (class attributes) in 3.3.
_HOOKS = getattr(getattr(triton, "knobs", None), "runtime", None)
if not hasattr(_HOOKS, "launch_enter_hook"):
    _HOOKS = triton.compiler.CompiledKernel


def _direct_launcher(kernel, compiled, n_args: int):
    """``compiled`` (what ``kernel[grid](...)`` returned) where its launcher can be called as
    Triton 3.3-3.9 call it, else None: a plain ``@triton.jit`` kernel (an autotuner's or a
    pre-run hook's work would be skipped), given every parameter (Triton passes defaults too),
    compiled for CUDA."""
    target = getattr(getattr(compiled, "metadata", None), "target", None)
    fields = ("run", "function", "packed_metadata", "launch_metadata")
    if type(kernel) is not JITFunction or getattr(kernel, "pre_run_hooks", None):
        return None
    if len(getattr(kernel, "params", ())) != n_args:
        return None
    if getattr(target, "backend", None) != "cuda" or not all(hasattr(compiled, f) for f in fields):
        return None
    return compiled


def launch(kernel, grid: tuple, tensors: tuple, scalars: tuple, num_warps: int) -> None:
    """``kernel[grid](*tensors, *scalars, num_warps=num_warps)`` (tensors first in the kernel's
    signature, then the other arguments, constexprs included), calling the compiled kernel's
    launcher directly after the first launch of each signature.

    ``kernel[grid](...)`` binds the arguments, specializes each and looks up the compiled kernel
    on every call: 15-27 us of host time per launch on the CPU machine (Triton 3.9,
    ``benchmarks/host_cost_cpu.py``), against about 4 us here. What selects Triton's compiled
    kernel is the current device, the options, each tensor's dtype and 16-byte alignment, each
    constexpr's value and each other argument's class (an int's: 1, a multiple of 16, 32 or 64
    bits); the key below holds the device, ``num_warps``, the tensors' dtypes and addresses
    modulo 16 and every other argument's value: finer than Triton's, so a new value costs one
    launch through Triton, never a wrong kernel. The launcher is then called as
    ``JITFunction.run`` calls it (current stream, launch metadata and hooks). Under the
    interpreter, and where ``_direct_launcher`` declines, every launch goes through Triton."""
    if not _DIRECT:
        kernel[grid](*tensors, *scalars, num_warps=num_warps)
        return
    active = driver.active
    device = active.get_current_device()
    key = (id(kernel), device, num_warps, scalars, *[t.dtype for t in tensors], *[t.data_ptr() % 16 for t in tensors])
    cached = _COMPILED.get(key)
    if cached is None or cached[0] is not kernel or cached[1] is None:
        compiled = kernel[grid](*tensors, *scalars, num_warps=num_warps)
        if cached is None or cached[0] is not kernel:  # first launch of this signature
            if len(_COMPILED) >= _MAX_COMPILED:
                _COMPILED.clear()
            _COMPILED[key] = (kernel, _direct_launcher(kernel, compiled, len(tensors) + len(scalars)))
        return
    compiled = cached[1]
    stream = active.get_current_stream(device)
    args = (*tensors, *scalars)
    grid_1, grid_2 = (*grid[1:], 1, 1)[:2]
    metadata = compiled.launch_metadata(grid, stream, *args)
    compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, metadata,
                 _HOOKS.launch_enter_hook, _HOOKS.launch_exit_hook, *args)  # fmt: skip


# ----------------------------------------------------------------------------- devices and autocast


def is_hip() -> bool:
    """True on a ROCm (AMD) build of torch."""
    return torch.version.hip is not None


def device_context(device):
    """Context manager making ``device`` the current accelerator (``torch.cuda.device`` and
    its XPU/NPU twins); does nothing for a CPU device."""
    device = torch.device(device)
    if device.type == "cpu":
        return contextlib.nullcontext()
    return torch.get_device_module(device.type).device(device)


@functools.lru_cache
def get_npu_core_count(default: int = 20) -> int:
    """AI cores of the Ascend NPU (the grid its kernels fill), as its Triton driver reports them;
    ``default`` without an NPU or that report."""
    if not is_npu_available():
        return default
    try:
        properties = triton.runtime.driver.active.utils.get_device_properties(torch.npu.current_device())
    except (AttributeError, RuntimeError):
        return default
    return int(properties.get("num_aicore", default))


def set_large_grf_mode(kernel_args: dict) -> None:
    """On Intel XPU, ask the launch in ``kernel_args`` for the large register file (``grf_mode``),
    which the widest row kernels need to avoid spills; elsewhere it changes nothing."""
    if infer_device() == "xpu":
        kernel_args["grf_mode"] = "large"


def get_amp_custom_fwd_bwd():
    """``(custom_fwd, custom_bwd)`` of ``torch.amp`` bound to this machine's device type: decorators
    that run an autograd Function's forward (and its backward) with the caller's autocast state."""
    device_type = infer_device()
    return (
        functools.partial(torch.amp.custom_fwd, device_type=device_type),
        functools.partial(torch.amp.custom_bwd, device_type=device_type),
    )


amp_custom_fwd, amp_custom_bwd = get_amp_custom_fwd_bwd()


@triton.jit
def element_mul_kernel(X_ptr, X_stride, grad_output_ptr, n_cols, BLOCK_SIZE: tl.constexpr, X_col_stride=1):
    """Row ``program_id`` of X (``n_cols`` elements) multiplied in place by the scalar
    ``grad_output_ptr[0]``: scales a gradient stored in X by the upstream gradient of a loss."""
    row = X_ptr + tl.program_id(0).to(tl.int64) * X_stride
    grad_output = tl.load(grad_output_ptr)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        x = tl.load(row + cols * X_col_stride, mask=mask)
        tl.store(row + cols * X_col_stride, x * grad_output, mask=mask)


# ----------------------------------------------------------------------------- argument checks


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"`{name}` must be a float32, bfloat16, float16 or float64 tensor, got {t.dtype}.")


def check_same_device(**tensors) -> None:
    """All given tensors (None skipped) must live on one device."""
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"`{name}` is on {t.device} but `{first_name}` is on {first.device}: move them to one device."
            )


def check_same_dtype(**tensors) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"`{name}` is {t.dtype} but `{first_name}` is {first.dtype}: cast them to one dtype.")


def check_same_shape(**tensors) -> None:
    named = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.shape != first.shape:
            raise ValueError(
                f"`{name}` has shape {tuple(t.shape)} but `{first_name}` has {tuple(first.shape)}: they must match."
            )


# ----------------------------------------------------------------------------- autograd


class LigerFunction(torch.autograd.Function):
    """Base of every op's autograd Function. Under ``torch.compile`` the op runs eagerly, as one
    graph break: its kernels are already fused, and its launch code is not traceable as written
    (host checks, ``data_ptr`` comparisons, gradients written over inputs). Depending on the
    torch version Dynamo either traces ``apply`` (which then calls a ``torch.compiler.disable``d
    apply) or handles ``Function.apply`` itself and traces ``forward`` (Triton launches included,
    on a GPU: the gradients came out wrong), so each subclass's ``forward`` also starts with a
    graph break when compiling. Eager calls pay two checks (``torch.compiler.disable`` on every
    call would cost ~5 us)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = staticmethod(_breaks_graph(cls.__dict__["forward"].__func__))

    @classmethod
    def apply(cls, *args, **kwargs):
        if _is_compiling():
            return _apply_eagerly(cls, *args, **kwargs)
        cls.before_apply()
        if kwargs or _functorch_transforms_active():
            return super().apply(*args, **kwargs)
        # torch's ``Function.apply`` in C, without its Python wrapper (a ``setup_context`` check and
        # a pass over the arguments for functorch's dead wrappers: ~8 us per call on the CPU machine,
        # where a whole fwd+bwd of the autograd floor is ~80): neither applies to these Functions,
        # which define no ``setup_context`` and so run under no functorch transform.
        return _C_APPLY.__get__(None, cls)(*args)

    @staticmethod
    def before_apply():
        """Runs in the caller's context (its grad mode) just before each application."""


_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3
_functorch_transforms_active = torch._C._are_functorch_transforms_active
_C_APPLY = torch._C._FunctionBase.__dict__["apply"]


@torch.compiler.disable
def _apply_eagerly(cls, *args, **kwargs):
    return cls.apply(*args, **kwargs)  # not compiling in here: the plain path above


def _breaks_graph(forward):
    @functools.wraps(forward)
    def guarded(*args, **kwargs):
        if _is_compiling():
            torch._dynamo.graph_break()  # Dynamo then runs the whole apply eagerly
        return forward(*args, **kwargs)

    return guarded


# ----------------------------------------------------------------------------- reference fallback


def fallback_forward(ctx, reference, *args):
    """Inside an autograd Function's forward: run ``reference(*args)`` with autograd on, so that
    ``fallback_backward`` can differentiate it. Returns the reference's outputs, detached."""
    inputs = [
        a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    ]
    with torch.enable_grad():
        outputs = reference(*inputs)
    ctx.fallback = (inputs, outputs)
    if isinstance(outputs, tuple):
        return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outputs)
    return outputs.detach()


def fallback_backward(ctx, *grad_outputs):
    """Gradients of every forward argument (None where there is none) through the reference."""
    inputs, outputs = ctx.fallback
    del ctx.fallback
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if isinstance(o, torch.Tensor) and o.requires_grad]
    wanted = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = [None] * len(inputs)
    if pairs and wanted:
        found = torch.autograd.grad(
            [o for o, _ in pairs],
            [inputs[i] for i in wanted],
            [g if g is not None else torch.zeros_like(o) for o, g in pairs],
            allow_unused=True,
        )
        for i, g in zip(wanted, found):
            grads[i] = g
    return tuple(grads)
