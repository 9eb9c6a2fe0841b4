"""Two-process training cases: a tiny Llama, stock and patched, under one wrapper; per-step losses and
gradients must be equal. ``python tests/distributed_cases.py CASE[,CASE...] PORT`` starts two ranks (gloo on CPU,
NCCL with one GPU a rank when two are visible) and exits non-zero when a rank fails.

Cases: ``ddp``, ``fsdp2`` (``fully_shard`` per decoder layer and the root), ``fsdp2-head``
(``lm_head`` its own FSDP2 unit: outside its forward its weight is a sharded DTensor; on CPU the
PyTorch reference would compute right through DTensor ops even unredirected, the kernels need the
redirection), ``fsdp1`` (every decoder layer and ``lm_head`` its own FSDP unit);
on GPUs also ``trainer-fsdp1``, ``trainer-zero2``, ``trainer-zero3`` (the Hugging Face Trainer
through accelerate / DeepSpeed; ``trainer-zero3`` with untied, tied and frozen heads); and the
tensor-parallel cases of tests/tensor_parallel_cases.py (``tp-norms``, ``tp-vocab-ce``, ``tp-flce``)."""

import faulthandler
import os
import socket
import sys

import torch
import torch.distributed as dist

WORLD = 2
STEPS = 3
TINY_LLAMA = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def device_of(rank):
    """A GPU per rank where there are WORLD of them (NCCL), else the CPU (gloo): on a one-GPU machine
    the cases run as in CI."""
    return torch.device("cuda", rank) if torch.cuda.device_count() >= WORLD else torch.device("cpu")


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def batch(step, rank, device):
    """This rank's batch at ``step``: [2, 9] tokens, some labels ignored."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 9), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    return ids.to(device), labels.to(device)


def full_grads(model, case):
    """Every parameter's whole gradient, by name (sharded ones gathered)."""
    if case == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
            return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            grad = p.grad
            out[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    return out


def wrap(model, case, device):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model.to(device)
    if case == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if case in ("fsdp2", "fsdp2-head"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (WORLD,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        if case == "fsdp2-head":
            fully_shard(model.lm_head, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    if case == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        policy = ModuleWrapPolicy({LlamaDecoderLayer, torch.nn.Linear})  # lm_head becomes its own unit
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, device_id=device, use_orig_params=True)
    raise ValueError(f"unknown case {case!r}")


def train(model, case, device):
    """Per-step mean losses over ranks and gradients, SGD between steps."""
    wrapped = wrap(model, case, device)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    losses, grads = [], []
    for step in range(STEPS):
        ids, labels = batch(step, dist.get_rank(), device)
        loss = wrapped(input_ids=ids, labels=labels).loss
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean / WORLD)
        grads.append(full_grads(wrapped, case))
        optimizer.step()
        optimizer.zero_grad()
    return torch.stack(losses), grads


def compare(stock, ours):
    """fp32 everywhere (TF32 off): the kernels' sums differ from PyTorch's in order only."""
    (stock_losses, stock_grads), (our_losses, our_grads) = stock, ours
    torch.testing.assert_close(our_losses, stock_losses, rtol=2e-5, atol=1e-6)
    for step, (theirs, mine) in enumerate(zip(stock_grads, our_grads)):
        assert mine.keys() == theirs.keys(), (step, mine.keys() ^ theirs.keys())
        for name in theirs:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-6, msg=f"step {step} {name}")


def wrapper_case(case, device):
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from liger_kernel.transformers.monkey_patch import revert_liger_kernel_to_llama

    stock = train(tiny_llama(), case, device)
    apply_liger_kernel_to_llama()  # class-level, as integrators patch before building the model
    try:
        ours = train(tiny_llama(), case, device)
    finally:
        revert_liger_kernel_to_llama()
    compare(stock, ours)


def trainer_losses(model, strategy, tmp):
    """Per-step losses of three Hugging Face Trainer steps (global batch 2 x WORLD)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Record(TrainerCallback):
        losses = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    examples = []
    for step in range(STEPS * WORLD):
        ids, labels = batch(step, 0, "cpu")
        examples += [{"input_ids": i, "labels": t} for i, t in zip(ids, labels)]
    options = dict(output_dir=tmp, max_steps=STEPS, per_device_train_batch_size=2, logging_steps=1, report_to=[])
    options.update(learning_rate=1e-3, lr_scheduler_type="constant", save_strategy="no", seed=0, data_seed=0)
    if strategy == "fsdp1":
        wrap_classes = ["LlamaDecoderLayer", "Linear"]  # lm_head its own unit: the redirection's case
        options.update(fsdp="full_shard auto_wrap", fsdp_config={"transformer_layer_cls_to_wrap": wrap_classes})
    else:
        zero = {"stage": int(strategy[-1])}
        options["deepspeed"] = {
            "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}},
        }
    record = Record()
    record.losses = []
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=examples, callbacks=[record])
    trainer.train()
    return torch.tensor(record.losses)


def trainer_case(case, device, tmp="/tmp/liger_trainer_case"):
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from liger_kernel.transformers.monkey_patch import revert_liger_kernel_to_llama

    strategy = case.split("-")[1]
    variants = [{}]
    if strategy == "zero3":  # the fused loss reads a partitioned head: tied, untied, frozen
        variants += [{"tie_word_embeddings": True}, {"frozen": True}]
    for variant in variants:
        frozen = variant.pop("frozen", False)
        runs = []
        for patched in (False, True):
            if patched:
                apply_liger_kernel_to_llama()
            model = tiny_llama(**variant)
            model.lm_head.weight.requires_grad_(not frozen)
            runs.append(trainer_losses(model, strategy, tmp))
        assert len(runs[0]) == STEPS, runs
        torch.testing.assert_close(runs[1], runs[0], rtol=1e-4, atol=1e-4, msg=f"{case} {variant} frozen={frozen}")
        revert_liger_kernel_to_llama()


def worker(rank, cases, port):
    faulthandler.dump_traceback_later(int(os.environ.get("LIGER_CASE_TIMEOUT", "200")), exit=True)  # a hang fails
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ.update(WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    device = device_of(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    for case in cases.split(","):
        if case.startswith("trainer-"):
            trainer_case(case, device)  # the Trainer starts the process group itself
        else:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=WORLD)
            if case.startswith("tp-"):
                from tensor_parallel_cases import CASES

                CASES[case](device)
            else:
                wrapper_case(case, device)
        if rank == 0:
            print(f"{case}: equal to the reference", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cases, timeout=240):
    """Runs the comma-separated ``cases`` in one fresh interpreter's two ranks (forking pytest itself,
    threads and all, is unsafe); returns ``(returncode, output)``."""
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, cases, str(free_port())], capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import transformers.models.llama.modeling_llama  # noqa: F401  once, before forking

    import liger_kernel.transformers  # noqa: F401

    method = "spawn" if torch.cuda.is_available() else "fork"
    torch.multiprocessing.start_processes(
        worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=WORLD, start_method=method
    )
