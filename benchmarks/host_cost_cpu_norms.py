"""Host (Python) cost of one norm fwd+bwd, measured on the CPU with the Triton launches stubbed out.

    PYTHONPATH=src python benchmarks/host_cost_cpu_norms.py

``host_cost.py`` needs a GPU; this isolates what our own Python path costs per call: the
norm Functions run their launch path (checks, allocations, launch settings, the dW / dB
reduction) on tiny CPU tensors with every norm kernel replaced by a no-op, against the
dispatch-dominated cost of eager PyTorch's fwd+bwd on the same tensors (``F.layer_norm``,
``F.rms_norm`` and Hugging Face's ``LlamaRMSNorm`` sequence of ops), and of a custom autograd
Function that only allocates its outputs (the floor of any op written in Python). One thread, CPU time of the
process (the machine is shared: wall time swings by 10x), best of interleaved rounds. The
numbers are this machine's; their ratios are what carries over. Triton's own launcher is not in
them (on the GPU machines it added roughly 20 us per launch, two launches per fwd+bwd).
"""

import os
import time
import timeit

os.environ["TRITON_INTERPRET"] = "1"  # before liger_kernel: CPU tensors take the Triton path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import liger_kernel.ops.norms as norms  # noqa: E402
from liger_kernel.transformers.functional import liger_layer_norm, liger_rms_norm  # noqa: E402

ROWS, HIDDEN, EPS = 4, 64, 1e-6
KERNELS = ("_norm_forward_kernel", "_norm_backward_kernel", "_norm_backward_parts_kernel")


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **meta)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def fwd_bwd(fn, args, grad_out):
    """One fwd+bwd as ``benchmarks/run.py`` times it."""
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return lambda: torch.autograd.grad(fn(*args), inputs, grad_out)


class _NothingFunction(torch.autograd.Function):
    """The floor: an autograd Function that allocates its outputs and gradients, nothing more."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.params = w, b
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        w, b = ctx.params
        return torch.empty_like(dy), torch.empty_like(w), torch.empty_like(b)


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


def main():
    torch.manual_seed(0)
    x = torch.randn(ROWS, HIDDEN, requires_grad=True)
    w = torch.randn(HIDDEN, requires_grad=True)
    b = torch.randn(HIDDEN, requires_grad=True)
    g = torch.randn(ROWS, HIDDEN)
    torch.set_num_threads(1)
    cases = {
        "autograd Function, no work": fwd_bwd(lambda x, w, b: _NothingFunction.apply(x, w, b), (x, w, b), g),
        "layer_norm eager F.layer_norm": fwd_bwd(lambda x, w, b: F.layer_norm(x, (HIDDEN,), w, b, EPS), (x, w, b), g),
        "layer_norm ours (stubbed)": fwd_bwd(lambda x, w, b: liger_layer_norm(x, w, b, EPS), (x, w, b), g),
        "rms_norm eager F.rms_norm": fwd_bwd(lambda x, w: F.rms_norm(x, (HIDDEN,), w, EPS), (x, w), g),
        "rms_norm eager LlamaRMSNorm": fwd_bwd(llama_rms_norm, (x, w), g),
        "rms_norm ours (stubbed)": fwd_bwd(lambda x, w: liger_rms_norm(x, w, EPS), (x, w), g),
    }
    for name in KERNELS:
        setattr(norms, name, _NoLaunch())
    norms.clear_launch_caches()
    print(f"torch {torch.__version__}; [{ROWS}, {HIDDEN}] fp32 CPU tensors; CPU us per fwd+bwd, best of 25 rounds")
    for label, us in best_us(cases).items():
        print(f"  {label:<34}{us:8.1f}")


if __name__ == "__main__":
    main()
