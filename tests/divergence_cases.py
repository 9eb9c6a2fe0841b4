"""What the divergence-loss tests share: run an op, its float64 reference and its same-dtype
reference on copies of one set of inputs, and compare the output and every gradient."""

import math

import torch
import torch.nn.functional as F
from parity import DEVICE, assert_matches

IGNORE = -100


def is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def copies(args, dtype=None):
    """Detached copies of the float tensors (cast to ``dtype`` when given), requiring grad as the originals."""
    return [a.detach().to(dtype or a.dtype).clone().requires_grad_(a.requires_grad) if is_float(a) else a for a in args]


def run(fn, args, upstream=None):
    """``fn(*args)``, the upstream gradient (random of the output's shape unless given) and the
    gradients of ``(out * upstream).sum()`` in the float args that require grad."""
    out = fn(*args)
    if upstream is None:
        upstream = torch.randn(out.shape, device=DEVICE, dtype=torch.float64) * 0.7 + 0.2
    wanted = [a for a in args if is_float(a) and a.requires_grad]
    grads = torch.autograd.grad(out, wanted, upstream.to(out.dtype), materialize_grads=True) if wanted else []
    return out, upstream, list(grads)


def check_parity(name, fn, reference, args, out_dtype, grad_mask=None):
    """``fn`` on ``args`` against ``reference`` on float64 copies: output and each gradient within
    twice the error of ``reference`` on same-dtype copies plus the dtype's floor, for one random
    upstream gradient. ``grad_mask`` (bool, broadcast to each gradient): the elements compared, where
    the loss is not differentiable at the inputs to within their computation's rounding."""
    out, upstream, grads = run(fn, copies(args))
    ref, _, ref_grads = run(reference, copies(args, torch.float64), upstream)
    base, _, base_grads = run(reference, copies(args), upstream)
    assert out.dtype == out_dtype, f"{name}: output dtype {out.dtype} != {out_dtype}"
    assert_matches(f"{name} loss", out, ref, base)
    wanted = [a for a in args if is_float(a) and a.requires_grad]
    assert len(grads) == len(wanted)
    for i, (g, g64, gb, a) in enumerate(zip(grads, ref_grads, base_grads, wanted)):
        assert g.dtype == a.dtype and g.shape == a.shape, f"{name} grad {i}: {g.dtype} {tuple(g.shape)}"
        if grad_mask is not None:
            g, g64, gb = (t * grad_mask for t in (g, g64, gb))
        assert_matches(f"{name} grad {i}", g, g64, gb)
    return out


def away_from_tvd_kinks(student_logits, teacher_logits, margin=1e-5):
    """Where softmax(student) and softmax(teacher) differ by more than ``margin`` of the larger (in
    float64): the TVD, ``|p - q|`` per element, has a kink at p = q, and an fp32 computation of p and q
    (ours, and the same-dtype reference) may land on either side of a float64 near-tie. At 1000 x
    32001 bf16 logits about one element in a run does (its gradient then moves by ~q)."""
    p, q = (t.detach().double().softmax(-1) for t in (student_logits, teacher_logits))
    return (p - q).abs() > margin * torch.maximum(p, q)


def labels_with_ignored(n_rows, n_classes=5, every=3, all_ignored=False):
    """Labels with every ``every``-th row (or all rows) at the ignore index."""
    labels = torch.randint(0, n_classes, (n_rows,), device=DEVICE)
    labels[::every] = IGNORE
    if all_ignored:
        labels[:] = IGNORE
    return labels


def distributions(shape, dtype, log=False, scale=2.0, requires_grad=True):
    """Random probabilities (or log-probabilities) over the last dimension, in ``dtype``."""
    z = torch.randn(shape, device=DEVICE) * scale
    t = torch.log_softmax(z, -1) if log else torch.softmax(z, -1)
    return t.to(dtype).requires_grad_(requires_grad)


def generalized_jsd(log_q, log_p, labels, beta):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` (student log q, teacher log p; batchmean over the
    tokens whose label is not -100), written from its definition with F.kl_div."""
    if beta == 0:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        log_m = torch.logsumexp(torch.stack([log_q + math.log(1 - beta), log_p + math.log(beta)]), dim=0)
        kl_teacher = F.kl_div(log_m, log_p, reduction="none", log_target=True)
        kl_student = F.kl_div(log_m, log_q, reduction="none", log_target=True)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    if labels is None:
        return jsd.sum() / jsd[..., 0].numel()
    mask = labels != IGNORE
    return jsd[mask].sum() / mask.sum()
