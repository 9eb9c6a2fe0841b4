"""Kernel profiles for session 9's diagnosis: DPO at issue 12's shape and the fused linear cross-entropy
at issue 16's head (N=8192, H=2048), with whichever ``liger_kernel`` is first on PYTHONPATH.

    PYTHONPATH=src python scripts/gpu/diag9_prof.py dpo
    PYTHONPATH=.peer/liger085 python scripts/gpu/diag9_prof.py dpo
"""

import sys

import torch
import triton.testing

what = sys.argv[1]
torch.manual_seed(0)
dev, bf16 = "cuda", torch.bfloat16
if what == "dpo":
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    B, T, H, V = 4, 1024, 4096, 128256
    x = torch.randn(2 * B, T, H, device=dev, dtype=bf16, requires_grad=True)
    w = (torch.randn(V, H, device=dev, dtype=bf16) / H**0.5).requires_grad_()
    rx, rw = x.detach().clone(), w.detach().clone()
    y = torch.randint(0, V, (2 * B, T), device=dev)
    loss_fn = LigerFusedLinearDPOLoss(use_ref_model=True)

    def step():
        loss = loss_fn(w, x, y, ref_input=rx, ref_weight=rw)
        (loss[0] if isinstance(loss, tuple) else loss).backward()
else:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    N, H, V = 8192, 2048, 128256
    x = torch.randn(N, H, device=dev, dtype=bf16, requires_grad=True)
    w = (torch.randn(V, H, device=dev, dtype=bf16) / H**0.5).requires_grad_()
    y = torch.randint(0, V, (N,), device=dev)
    loss_fn = LigerFusedLinearCrossEntropyLoss()

    def step():
        loss_fn(w, x, y).backward()


def zero():
    x.grad = None
    w.grad = None


step()
zero()
torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
torch.cuda.reset_peak_memory_stats()
ms = triton.testing.do_bench(step, grad_to_none=[x, w], rep=300)
print(f"{what}: {ms:.2f} ms median, peak extra {(torch.cuda.max_memory_allocated() - base) / 1e9:.3f} GB")
with torch.profiler.profile() as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=90))
