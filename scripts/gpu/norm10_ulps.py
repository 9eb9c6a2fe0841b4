"""The RMSNorm's fp32 rounding on this machine: ours (Triton) and the stock Hugging Face norms of the
MoE families that move off float64 on the GPU only (issue 14, scripts/gpu/moe10_norm_probe.py),
each against float64, in units of one fp32 rounding of a typical element (``ulps``), for the
output, dX and dW at the convergence test's GPU shape:

    PYTHONPATH=src python scripts/gpu/norm10_ulps.py
"""

import copy
import importlib

import torch

from liger_kernel.transformers.rms_norm import LigerRMSNorm

ROWS, HIDDEN = 4 * 255, 1024
FAMILIES = {  # stock class, our numerics (offset, casting_mode)
    "qwen3_5_moe": ("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe.Qwen3_5MoeRMSNorm", 1.0, "gemma"),
    "gpt_oss": ("transformers.models.gpt_oss.modeling_gpt_oss.GptOssRMSNorm", 0.0, "gemma"),
    "llama": ("transformers.models.llama.modeling_llama.LlamaRMSNorm", 0.0, "llama"),
}


def stock_class(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def ulps(actual, reference):
    """|actual - reference| over half an fp32 ulp of the reference's rms (one rounding of a typical
    element): (max, rms)."""
    ulp = torch.finfo(torch.float32).eps / 2 * reference.pow(2).mean().sqrt()
    r = (actual.double() - reference).abs() / ulp
    return r.max().item(), r.pow(2).mean().sqrt().item()


class Float64Norm(torch.nn.Module):
    """The textbook formula: x / sqrt(mean(x^2) + eps) * (offset + w), every step in float64."""

    def __init__(self, weight, offset, eps):
        super().__init__()
        self.weight, self.offset, self.eps = torch.nn.Parameter(weight.clone()), offset, eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (self.offset + self.weight)


def run(module, x, dy, dtype):
    x = x.detach().to(dtype, copy=True).requires_grad_(True)
    module = copy.deepcopy(module).to(dtype)
    y = module(x)
    y.backward(dy.to(dtype))
    return y.detach(), x.grad, module.weight.grad


def main():
    torch.manual_seed(0)
    for family, (path, offset, casting) in FAMILIES.items():
        try:
            cls = stock_class(path)
        except (ImportError, AttributeError) as e:
            print(family, "skipped:", e)
            continue
        x = torch.randn(ROWS, HIDDEN, device="cuda") * 3
        dy = torch.randn(ROWS, HIDDEN, device="cuda")
        w = torch.randn(HIDDEN, device="cuda") * 0.1 + (0.0 if offset else 1.0)
        stock = cls(HIDDEN, eps=1e-6).cuda()
        ours = LigerRMSNorm(HIDDEN, 1e-6, offset=offset, casting_mode=casting).cuda()
        for m in (stock, ours):
            m.weight.data.copy_(w)
        ref = run(Float64Norm(w, offset, 1e-6), x, dy, torch.float64)
        for label, m in (("stock", stock), ("ours", ours)):
            got = run(m, x, dy, torch.float32)
            parts = [
                f"{n} {a:.2f}/{b:.2f}" for n, (a, b) in zip(("y", "dx", "dw"), (ulps(g, r) for g, r in zip(got, ref)))
            ]
            print(f"{family:12s} {label:6s} max/rms ulps: {', '.join(parts)}", flush=True)


if __name__ == "__main__":
    main()
