"""Tensor-parallel cases run by tests/distributed_cases.py's two ranks (TP=2): DTensor norms, the
vocabulary-parallel cross-entropy and the vocabulary-parallel fused linear cross-entropy, each
against the single-process result on the whole tensors, computed on every rank."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from liger_kernel.ops.fused_linear_cross_entropy import fused_linear_cross_entropy_reference
from liger_kernel.ops.vocab_parallel_cross_entropy import vocab_parallel_cross_entropy_reference
from liger_kernel.transformers import LigerLayerNorm, LigerRMSNorm, LigerVocabParallelCrossEntropy
from liger_kernel.transformers.functional import liger_fused_linear_scaled_cross_entropy_tp

V, H, N = 37, 16, 11  # an odd vocabulary: slices of 19 and 18


def close(actual, expected, msg=""):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-6, msg=msg)


def whole(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def mesh_of(device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def norm_case(device):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = mesh_of(device)
    torch.manual_seed(0)
    x = torch.randn(2, 6, H, device=device)
    grad_out = torch.randn_like(x)
    for make, x_place, w_place in [
        (lambda: LigerRMSNorm(H), Shard(1), Replicate()),  # sequence parallel
        (lambda: LigerRMSNorm(H), Replicate(), Shard(0)),  # a sharded weight is gathered
        (lambda: LigerLayerNorm(H), Shard(0), Replicate()),
    ]:
        reference, norm = make().to(device), make().to(device)
        with torch.no_grad():
            for p_ref in reference.parameters():
                p_ref.uniform_(0.5, 1.5)
        norm.load_state_dict(reference.state_dict())
        for name, p in list(norm.named_parameters()):
            setattr(norm, name, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [w_place])))
        x_ref = x.clone().requires_grad_()
        reference(x_ref).backward(grad_out)
        x_dt = distribute_tensor(x, mesh, [x_place]).requires_grad_()
        out = norm(x_dt)
        out.backward(distribute_tensor(grad_out, mesh, [x_place]))
        what = f"{type(norm).__name__} x={x_place} w={w_place}"
        assert out.placements == (x_place,), what
        close(whole(out), reference(x), what)
        close(whole(x_dt.grad), x_ref.grad, what)
        for name, p in norm.named_parameters():
            close(whole(p.grad), dict(reference.named_parameters())[name].grad, f"{what} {name}")
    with pytest.raises(ValueError, match="normalized"):
        LigerRMSNorm(H).to(device)(distribute_tensor(x, mesh, [Shard(2)]))


def my_slice(device):
    rank, sizes = dist.get_rank(), [V - V // 2, V // 2]
    return sum(sizes[:rank]), sizes[rank]


def labels(device, n=N):
    y = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(3)).to(device)
    y[[1, 5]] = -100
    return y


def vocab_ce_case(device):
    torch.manual_seed(1)
    logits = torch.randn(N, V, device=device, dtype=torch.float64) * 3
    y = labels(device)
    start, size = my_slice(device)
    for eps, formula, mode in [(0.0, "pytorch", "global"), (0.1, "pytorch", "global"), (0.2, "megatron", "partition")]:
        for reduction in ("none", "mean"):
            ref_logits = logits.clone().requires_grad_()
            part = (start, size) if mode == "partition" else None
            ref = vocab_parallel_cross_entropy_reference(ref_logits, y, -100, eps, formula, part)
            if reduction == "mean":
                ref = ref.sum() / (y != -100).sum()
            ref.sum().backward()
            if mode == "global" and formula == "pytorch":  # the spec is F.cross_entropy there
                expected = F.cross_entropy(logits, y, label_smoothing=eps, reduction=reduction)
                close(ref, expected)
            local = logits[:, start : start + size].float().clone().requires_grad_()
            loss_fn = LigerVocabParallelCrossEntropy(-100, eps, reduction, formula, mode)
            loss = loss_fn(local, y)
            loss.sum().backward()
            what = f"eps={eps} {formula} {mode} {reduction}"
            close(loss, ref, what)
            close(local.grad, ref_logits.grad[:, start : start + size], what)


FLCE_OPTIONS = [
    dict(temperature=0.7, return_entropy=True),
    dict(reduction="mean", label_smoothing=0.1, lse_square_scale=1e-3, softcap=5.0, ce_weight=True, return_z_loss=True),
    dict(reduction="sum", use_token_scaling=True, bias=True, return_token_accuracy=True, return_predicted_tokens=True),
    dict(reduction="mean", dtensor=True),
]


def flce_case(device):
    torch.manual_seed(2)
    x = torch.randn(1, N, H, device=device, dtype=torch.float64)
    w = torch.randn(V, H, device=device, dtype=torch.float64) / 2
    b = torch.randn(V, device=device, dtype=torch.float64)
    class_weight = torch.rand(V, device=device, dtype=torch.float64) + 0.5
    y = labels(device).view(1, N)
    start, size = my_slice(device)
    for options in FLCE_OPTIONS:
        options = dict(options)
        temperature = options.pop("temperature", 1.0)
        return_entropy = options.pop("return_entropy", False)
        use_bias, use_weight, dtensor = (options.pop(k, False) for k in ("bias", "ce_weight", "dtensor"))
        options.setdefault("reduction", "none")
        ce_weight = class_weight if use_weight else None
        x_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, w, b))
        ref = fused_linear_cross_entropy_reference(
            x_ref / temperature, w_ref, y, b_ref / temperature if use_bias else None, ce_weight, **options
        )
        ref[0].sum().backward()
        x_tp = x.float().requires_grad_()
        w_tp = w[start : start + size].float().clone().requires_grad_()
        b_tp = b[start : start + size].float().clone().requires_grad_()
        head = w_tp
        if dtensor:
            from torch.distributed.tensor import Shard, distribute_tensor

            head = torch.nn.Parameter(distribute_tensor(w.float(), mesh_of(device), [Shard(0)]))
        result = liger_fused_linear_scaled_cross_entropy_tp(
            x_tp,
            head,
            y,
            None,
            temperature,
            return_entropy=return_entropy,
            bias=b_tp if use_bias else None,
            ce_weight=None if ce_weight is None else ce_weight.float(),
            **options,
        )
        if return_entropy:
            result, entropy = result
            p = torch.softmax((x @ w.T) / temperature, -1)
            close(entropy, -(p * p.log()).sum(-1), "entropy")
        loss = result if torch.is_tensor(result) else result.loss
        loss.sum().backward()
        what = str(options)
        close(loss, ref[0], what)
        if options.get("return_z_loss"):
            close(result.z_loss, ref[1], what)
        if options.get("return_token_accuracy"):
            close(result.token_accuracy, ref[2], what)
            assert torch.equal(result.predicted_tokens, ref[3]), what
        close(x_tp.grad, x_ref.grad, what)
        close(whole(head.grad) if dtensor else w_tp.grad, w_ref.grad if dtensor else w_ref.grad[start : start + size])
        if use_bias:
            close(b_tp.grad, b_ref.grad[start : start + size], what)


CASES = {"tp-norms": norm_case, "tp-vocab-ce": vocab_ce_case, "tp-flce": flce_case}
