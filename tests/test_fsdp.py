"""``_FSDPForwardRedirection`` with real FSDP sharding: two CPU processes (gloo) shard a head's
weight; the redirected loss must see the full weight, equal the unsharded loss, and leave each
rank the right shard of the gradient. (Fake-wrapper and unwrapped cases: test_monkey_patch.py.)"""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
WORLD = 2


def worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import FullyShardedDataParallel

    from liger_kernel.transformers.fsdp import _FSDPForwardRedirection, is_fsdp_wrapped

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5, bias=False)
    weight, x = head.weight.detach().clone(), torch.randn(3, 8)
    wrapped = FullyShardedDataParallel(head, device_id=torch.device("cpu"))
    shapes = []

    def loss_fn(module, x):
        shapes.append(tuple(module.weight.shape))
        return (x @ module.weight.T).square().sum()

    loss = _FSDPForwardRedirection()(wrapped, loss_fn, wrapped.module, x)
    loss.backward()
    reference = weight.clone().requires_grad_()
    (x @ reference.T).square().sum().backward()
    flat = next(wrapped.parameters())
    shards = [torch.empty_like(flat.grad) for _ in range(WORLD)]
    dist.all_gather(shards, flat.grad)
    assert is_fsdp_wrapped(wrapped) and flat.numel() < weight.numel()  # sharded outside the forward
    assert shapes == [(5, 8)]  # the full weight inside it
    torch.testing.assert_close(loss, (x @ weight.T).square().sum())
    torch.testing.assert_close(torch.cat(shards)[: weight.numel()], reference.grad.reshape(-1))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redirected_loss_sees_the_gathered_weight():
    # A fresh interpreter forks the ranks: forking pytest itself, threads and all, is unsafe.
    done = subprocess.run([sys.executable, __file__, str(free_port())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


if __name__ == "__main__":
    torch.multiprocessing.start_processes(worker, args=(int(sys.argv[1]),), nprocs=WORLD, start_method="fork")
