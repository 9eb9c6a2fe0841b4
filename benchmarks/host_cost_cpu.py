"""Host (Python) cost of one fwd+bwd per call, measured on the CPU with the Triton launches stubbed out.

    PYTHONPATH=src python benchmarks/host_cost_cpu.py

``host_cost.py`` needs a GPU; this isolates what our own Python path costs per call: each op runs
its launch path (argument checks, layout decisions, allocations, launch settings, autograd
bookkeeping, the dW / dB reduction) on tiny CPU tensors with every Triton kernel replaced by a
no-op, against eager PyTorch's fwd+bwd on the same tensors, whose time is dispatch, which is what
its GPU host cost is made of too; and against an autograd Function that only allocates its
outputs (the floor of any op written in Python). One thread, CPU time of the process (the machine
is shared: wall time swings by 10x), best of interleaved rounds. The numbers are this machine's;
their ratios are what carries over. Triton's own launcher is not in them (on the GPU machines it
added roughly 20 us per launch).
"""

import os
import time
import timeit

os.environ["TRITON_INTERPRET"] = "1"  # before liger_kernel: CPU tensors take the Triton path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import liger_kernel.ops.norms as norms  # noqa: E402
import liger_kernel.ops.rope as rope_ops  # noqa: E402
import liger_kernel.ops.swiglu as swiglu_ops  # noqa: E402
from liger_kernel.transformers.functional import (  # noqa: E402
    liger_geglu,
    liger_layer_norm,
    liger_rms_norm,
    liger_rope,
    liger_swiglu,
)

EPS = 1e-6


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def stub_launches():
    """Every launched kernel of the measured ops becomes a no-op (launch caches cleared)."""
    for module in (norms, swiglu_ops, rope_ops):
        for name in dir(module):
            if name.endswith("_kernel") and hasattr(getattr(module, name), "run"):
                setattr(module, name, _NoLaunch())
    norms.clear_launch_caches()


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
        "layer_norm ours (stubbed)": fwd_bwd(lambda x, w, b: liger_layer_norm(x, w, b, EPS), (x, w, b), g),
        "rms_norm eager F.rms_norm": fwd_bwd(lambda x, w: F.rms_norm(x, (hidden,), w, EPS), (x, w), g),
        "rms_norm eager LlamaRMSNorm": fwd_bwd(llama_rms_norm, (x, w), g),
        "rms_norm ours (stubbed)": fwd_bwd(lambda x, w: liger_rms_norm(x, w, EPS), (x, w), g),
        "swiglu eager silu(a) * b": fwd_bwd(lambda a, b: F.silu(a) * b, ab, dc),
        "swiglu ours (stubbed)": fwd_bwd(liger_swiglu, ab, dc),
        "geglu eager gelu_tanh(a) * b": fwd_bwd(lambda a, b: gelu_tanh(a) * b, ab, dc),
        "geglu ours (stubbed)": fwd_bwd(liger_geglu, ab, dc),
        "rope eager HF apply_rotary_pos_emb": fwd_bwd(hf_rope, rope_args, rope_grads),
        "rope ours (stubbed)": fwd_bwd(liger_rope, rope_args, rope_grads),
    }


def main():
    torch.set_num_threads(1)
    measured = cases()
    stub_launches()
    print(f"torch {torch.__version__}; tiny fp32 CPU tensors; CPU us per fwd+bwd, best of 25 rounds")
    for label, us in best_us(measured).items():
        print(f"  {label:<38}{us:8.1f}")


if __name__ == "__main__":
    main()
