"""Data-parallel wrappers and sharded heads on CPU.

Two processes (gloo) train a tiny Llama under DDP, FSDP2 (``fully_shard``; also with ``lm_head`` its
own unit) and FSDP1 (``lm_head`` its own unit): stock and patched per-step losses and gradients must
be equal (tests/distributed_cases.py; the same cases run on two GPUs with NCCL, plus the Hugging
Face Trainer under FSDP1 and DeepSpeed ZeRO-2/3, from scripts/gpu/multigpu.sh).

DeepSpeed ZeRO-3 is emulated in one process: it leaves a partitioned parameter empty outside its
owner's forward, gathers it in a forward pre-hook and again before that forward's backward. The
fused loss must reach ``lm_head.weight`` through the head's forward, trainable or frozen, tied or
untied."""

import pytest
import torch
import torch.distributed as dist
from distributed_cases import run, tiny_llama

from liger_kernel.transformers import apply_liger_kernel_to_llama
from liger_kernel.transformers.monkey_patch import revert_liger_kernel_to_llama


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_fsdp2_fsdp1_match_stock(monkeypatch):
    # The ops' PyTorch references: what is checked here is the patched forward under each wrapper
    # (the Triton interpreter would take minutes); the GPU run takes the kernels.
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    code, output = run("ddp,fsdp2,fsdp2-head,fsdp1", timeout=400)
    assert code == 0, output[-6000:]


class _GatherBeforeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gather, output):
        ctx.gather = gather
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        ctx.gather()
        return None, grad


def partition_like_zero3(model):
    """Emulates ZeRO-3 on ``lm_head.weight`` (shared with ``embed_tokens`` when tied); returns the
    list that counts gathers."""
    param = model.lm_head.weight
    full = param.data
    param.ds_id, param.ds_status = 0, "NOT_AVAILABLE"
    gathers = []

    def gather(*_):
        gathers.append(1)
        param.data = full

    def release(module, args, output):
        param.data = full.new_empty(0)
        if torch.is_tensor(output) and output.requires_grad:
            return _GatherBeforeBackward.apply(gather, output)
        return output

    for module in model.modules():
        if any(p is param for p in module._parameters.values()):
            module.register_forward_pre_hook(gather)
            module.register_forward_hook(release)
    param.data = full.new_empty(0)
    return gathers


@pytest.fixture
def patched_llama():
    apply_liger_kernel_to_llama()
    yield
    revert_liger_kernel_to_llama()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_zero3_partitioned_head_is_gathered_through_its_forward(patched_llama, tied, frozen):
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    results = []
    for partitioned in (False, True):
        model = tiny_llama(tie_word_embeddings=tied).train()
        model.lm_head.weight.requires_grad_(not frozen)
        gathers = partition_like_zero3(model) if partitioned else []
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads, len(gathers)))
    (loss, grads, _), (got_loss, got_grads, n_gathers) = results
    torch.testing.assert_close(got_loss, loss, rtol=0, atol=0)
    head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"  # a shared weight is named once
    assert got_grads.keys() == grads.keys() and (head_name in grads) == (not frozen)
    for name in grads:
        torch.testing.assert_close(got_grads[name], grads[name], rtol=0, atol=0, msg=name)
    # the head's forward and backward; a tied embedding's forward, and backward when trainable
    assert n_gathers == 2 + tied * (2 - frozen)
