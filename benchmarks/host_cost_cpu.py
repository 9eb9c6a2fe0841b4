"""Host (Python) cost of one fwd+bwd per call, measured on the CPU with a stand-in CUDA driver.

    PYTHONPATH=src python benchmarks/host_cost_cpu.py

``host_cost.py`` needs a GPU; this measures what our host path costs per call without one: each op
runs its whole launch path (argument checks, layout decisions, allocations, launch settings,
autograd bookkeeping, the dW / dB reduction, and Triton's own launcher: binding, specialization,
cache lookup) on tiny CPU tensors, with Triton's driver replaced by one that reports a CUDA device
and compiled kernels that do nothing. Against eager PyTorch's fwd+bwd on the same tensors, whose
time is dispatch, which is what its GPU host cost is made of too; and against an autograd
Function that only allocates its outputs (the floor of any op written in Python). One thread, CPU
time of the process (the machine is shared: wall time swings by 10x), best of interleaved rounds.
The numbers are this machine's; their ratios are what carries over (the H200 machine's host was
about 2x slower per Python call). "through Triton" is ours with every launch going through
``kernel[grid](...)`` (no direct launcher, ``ops.utils.launch``).
"""

import sys
import time
import timeit
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.runtime.jit
from triton.runtime import driver

import liger_kernel.ops.utils as ops_utils
import liger_kernel.utils
from liger_kernel.transformers.functional import liger_geglu, liger_layer_norm, liger_rms_norm, liger_rope, liger_swiglu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from triton_stand_in import StandInDriver, compiled_kernel  # noqa: E402

EPS = 1e-6


def _compile(self, key, signature, device, *rest):
    """Stands in for ``JITFunction._do_compile``: a compiled kernel whose launcher does nothing."""
    return compiled_kernel(self, key, device)


def stub_launches():
    """Triton kernels launch through the stand-in driver; the ops take their Triton path on CPU tensors."""
    driver.set_active(StandInDriver())
    triton.runtime.jit.JITFunction._do_compile = _compile
    liger_kernel.utils.launches_kernels = lambda device_type: True


class _NothingFunction(torch.autograd.Function):
    """The floor: an autograd Function that allocates its output and gradients, nothing more."""

    @staticmethod
    def forward(ctx, x, *others):
        ctx.others = others
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        return torch.empty_like(dy), *(torch.empty_like(t) for t in ctx.others)


def fwd_bwd(fn, args, grad_out):
    """One fwd+bwd as ``benchmarks/run.py`` times it (inputs are leaves, as bench_ops gives them)."""
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return lambda: torch.autograd.grad(fn(*args), inputs, grad_out)


def best_us(cases, number=300, rounds=25) -> dict:
    """Best CPU time per call (us) of each case, the cases interleaved round by round."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for label, call in cases.items():
            best[label] = min(best[label], timeit.Timer(call, timer=time.process_time).timeit(number) / number * 1e6)
    return best


def llama_rms_norm(x, w):  # LlamaRMSNorm.forward, as benchmarks/bench_ops.py's eager provider
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return w * h.to(x.dtype)


def hf_rope(q, k, cos, sin):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


def cases() -> dict:
    torch.manual_seed(0)
    rows, hidden = 4, 64
    x, g = torch.randn(rows, hidden, requires_grad=True), torch.randn(rows, hidden)
    w, b = torch.randn(hidden, requires_grad=True), torch.randn(hidden, requires_grad=True)
    ab, dc = (torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)), torch.randn(8, 16)
    q = torch.randn(1, 4, 2, 16).transpose(1, 2).requires_grad_()  # HF: [B, T, H, D] viewed [B, H, T, D]
    k = torch.randn(1, 4, 1, 16).transpose(1, 2).requires_grad_()
    rope_args, rope_grads = (
        (q, k, torch.randn(1, 4, 16), torch.randn(1, 4, 16)),
        (torch.randn(1, 2, 4, 16), torch.randn(1, 1, 4, 16)),
    )
    gelu_tanh = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
    return {
        "autograd Function, no work (3 in)": fwd_bwd(_NothingFunction.apply, (x, w, b), g),
        "autograd Function, no work (2 in)": fwd_bwd(_NothingFunction.apply, ab, dc),
        "layer_norm eager F.layer_norm": fwd_bwd(lambda x, w, b: F.layer_norm(x, (hidden,), w, b, EPS), (x, w, b), g),
        "layer_norm ours": fwd_bwd(lambda x, w, b: liger_layer_norm(x, w, b, EPS), (x, w, b), g),
        "rms_norm eager F.rms_norm": fwd_bwd(lambda x, w: F.rms_norm(x, (hidden,), w, EPS), (x, w), g),
        "rms_norm eager LlamaRMSNorm": fwd_bwd(llama_rms_norm, (x, w), g),
        "rms_norm ours": fwd_bwd(lambda x, w: liger_rms_norm(x, w, EPS), (x, w), g),
        "swiglu eager silu(a) * b": fwd_bwd(lambda a, b: F.silu(a) * b, ab, dc),
        "swiglu ours": fwd_bwd(liger_swiglu, ab, dc),
        "geglu eager gelu_tanh(a) * b": fwd_bwd(lambda a, b: gelu_tanh(a) * b, ab, dc),
        "geglu ours": fwd_bwd(liger_geglu, ab, dc),
        "rope eager HF apply_rotary_pos_emb": fwd_bwd(hf_rope, rope_args, rope_grads),
        "rope ours": fwd_bwd(liger_rope, rope_args, rope_grads),
    }


def through_triton(call):
    """``call`` with every launch going through ``kernel[grid](...)`` (no direct launcher)."""

    def run():
        ops_utils._DIRECT = False
        try:
            return call()
        finally:
            ops_utils._DIRECT = True

    return run


def main():
    torch.set_num_threads(1)
    stub_launches()
    measured = cases()
    measured.update({f"{label}, through Triton": through_triton(c) for label, c in measured.items() if "ours" in label})
    print(f"torch {torch.__version__}; tiny fp32 CPU tensors; CPU us per fwd+bwd, best of 25 rounds")
    for label, us in best_us(measured).items():
        print(f"  {label:<38}{us:8.1f}")


if __name__ == "__main__":
    main()
