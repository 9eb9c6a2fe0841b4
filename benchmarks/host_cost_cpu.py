"""Host (Python) cost of one fwd+bwd per call on the CPU, with the Triton launches stubbed out.

    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/host_cost_cpu.py

The kernels are replaced by no-ops, so what is timed is the path a GPU call takes on the host:
argument checks, layout decisions, allocations, autograd bookkeeping and the launch call itself
(minus Triton's launcher, ~20 us per launch on the lent GPU machine; see NOTES.md). Eager
PyTorch on tiny CPU tensors is the yardstick: its time is dispatch, which is what its GPU
host cost is made of too. Medians of many calls, microseconds.
"""

import os
import statistics
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # our ops take the kernel path on CPU tensors

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import liger_kernel.ops.rope as rope_ops  # noqa: E402
import liger_kernel.ops.swiglu as swiglu_ops  # noqa: E402
from liger_kernel.transformers.functional import liger_geglu, liger_rope, liger_swiglu  # noqa: E402


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_launches():
    for module in (swiglu_ops, rope_ops):
        for name in dir(module):
            if name.endswith("_kernel") and hasattr(getattr(module, name), "run"):
                setattr(module, name, _NoLaunch())


def time_pair(ours, eager, calls=300, rounds=15):
    """Median microseconds per call of each, timed in alternating rounds (the CPU is shared: the
    ratio of neighbouring rounds is steadier than either time)."""
    for step in (ours, eager) * 100:
        step()
    times = {ours: [], eager: []}
    for _ in range(rounds):
        for step in (ours, eager):
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            times[step].append((time.perf_counter() - t0) / calls * 1e6)
    ratios = [o / e for o, e in zip(times[ours], times[eager])]
    return statistics.median(times[ours]), statistics.median(times[eager]), statistics.median(ratios)


def gated_case(fn):
    a, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    dc = torch.randn(8, 16)

    def step():
        fn(a, b).backward(dc)  # leaves, as benchmarks/bench_ops.py gives them: da and db are new tensors

    return step


def rope_case(fn):
    q = torch.randn(1, 4, 2, 16).transpose(1, 2).requires_grad_()  # HF: [B, T, H, D] viewed [B, H, T, D]
    k = torch.randn(1, 4, 1, 16).transpose(1, 2).requires_grad_()
    cos, sin = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    dq, dk = torch.randn(1, 2, 4, 16), torch.randn(1, 1, 4, 16)

    def step():
        torch.autograd.backward(fn(q, k, cos, sin), (dq, dk))

    return step


def hf_rope(q, k, cos, sin):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


class _Nothing(torch.autograd.Function):
    """The floor: an autograd Function whose forward allocates its output and nothing else."""

    @staticmethod
    def forward(ctx, a, b):
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx, dc):
        return dc, dc


CASES = {
    "nothing": (gated_case(_Nothing.apply), gated_case(lambda a, b: F.silu(a) * b)),
    "swiglu": (gated_case(liger_swiglu), gated_case(lambda a, b: F.silu(a) * b)),
    "geglu": (gated_case(liger_geglu), gated_case(lambda a, b: F.gelu(a, approximate="tanh") * b)),
    "rope": (rope_case(liger_rope), rope_case(hf_rope)),
}


def main():
    stub_launches()
    print(
        f"{'op':<8}{'ours us':>10}{'eager us':>10}{'ratio':>8}   (fwd+bwd, launches stubbed, torch {torch.__version__})"
    )
    for name, (ours, eager) in CASES.items():
        t_ours, t_eager, ratio = time_pair(ours, eager)
        print(f"{name:<8}{t_ours:>10.1f}{t_eager:>10.1f}{ratio:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
