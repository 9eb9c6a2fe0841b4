"""Post-training losses on one GPU, side by side: forward+backward time, peak extra memory and the
head-matmul floor, for ours, the plain PyTorch path with materialized logits (what TRL does
without Liger), ``torch.compile`` of that path, and Liger Kernel 0.8.5 (its own process).
Losses (issue 12's shapes): ``dpo`` (4 pairs x 1024 tokens, a reference head), ``grpo`` (8 x 1024
tokens, dapo), ``jsd`` (distillation, 8192 tokens, student and teacher heads).

    bash benchmarks/setup_peers.sh                       # once: unpack .peer/liger085
    PYTHONPATH=src python benchmarks/bench_post_training.py --out benchmarks/results/h200/post_training
        # DPO, GRPO and JSD; ours, plain, compile, liger085
    PYTHONPATH=src python benchmarks/bench_post_training.py --sweep --providers ours,plain,liger085,compile \
        --out benchmarks/results/h200/post_training
        # also ours with every DPO loss type (11) and GRPO loss type (8): providers "type=<loss_type>"
    PYTHONPATH=src python benchmarks/bench_post_training.py --smoke      # tiny shapes, CPU ok

One run measures in order of what matters most: ours, its variants and the plain path (with the
error columns), Liger 0.8.5, every loss type (fewer timed calls), ``torch.compile`` (slow to
build); the results file is rewritten after each row, so a run cut short keeps what it measured.
``--warm-only`` makes only each provider's first call (compilation into Triton's and Inductor's
caches on disk): ``scripts/gpu/post.sh`` runs it beside the tests, so that the timed run starts warm.

Liger Kernel 0.8.5 has our import name, so its provider runs in a child process of this script
with ``.peer/liger085`` first on PYTHONPATH (as benchmarks/run.py does), without the error
columns (the float64 references use our package); every other provider runs here. Providers
named ``ours-*`` are tuning variants of ours (module settings changed for the call, restored).

Adding a loss: one ``Bench`` in ``BENCHES`` (inputs for a shape, the floor's flops, and one
function per provider returning the scalar loss; the harness runs backward and measures).
Per (loss, provider): ``do_bench`` median of forward+backward (>= 20 timed calls), peak extra memory
of one forward+backward (``max_memory_allocated`` minus what the inputs hold), the loss and the
gradient norms (cross-checked between providers in the table). The floor is the bench's flops at
the measured rate of the forward's own bf16 logits matmul.
"""

import argparse
import contextlib
import functools
import importlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PEER_PATH = REPO / ".peer" / "liger085"
PEERS = ("liger085",)  # providers that run in a child process with the peer on PYTHONPATH


@dataclass
class Bench:
    """One loss: ``inputs(shape, device)`` -> dict of tensors (the ones in ``grads`` get
    gradients), ``tokens(shape)`` of the trained head, ``flops(shape)`` of the floor,
    ``providers``: name -> ``fn(inputs) -> loss``;
    ``reference(inputs)`` -> float64 gradients by name (optional: the error columns)."""

    shape: dict
    smoke_shape: dict
    inputs: Callable
    tokens: Callable
    flops: Callable
    grads: tuple
    providers: dict = field(default_factory=dict)
    reference: Callable | None = None


BENCHES: dict[str, Bench] = {}


def provider(bench: str, name: str):
    """Decorator: register ``fn(inputs) -> loss`` as provider ``name`` of ``bench``."""

    def register(fn):
        BENCHES[bench].providers[name] = fn
        return fn

    return register


@contextlib.contextmanager
def settings(changes: dict):
    """Module constants (``{module name: {name: value}}``) set for a call (the engines read them at
    call time), restored after."""
    saved = []
    try:
        for module_name, values in changes.items():
            module = importlib.import_module(module_name)
            for k, v in values.items():
                saved.append((module, k, getattr(module, k)))
                setattr(module, k, v)
        yield
    finally:
        for module, k, v in reversed(saved):
            setattr(module, k, v)


def variant(bench: str, name: str, base: Callable, changes: dict):
    """Register provider ``name``: ``base`` run under ``settings(changes)``."""

    def run(i):
        with settings(changes):
            return base(i)

    BENCHES[bench].providers[name] = run


def logp_float64(x, w, ids, ignore_index=-100, chunk=1024):
    """float64 per-token log-probs of ``ids`` (0 at ``ignore_index``) over token chunks."""
    logp = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    safe = ids.clamp(min=0)
    for s in range(0, x.shape[0], chunk):
        z = x[s : s + chunk] @ w.T
        logp[s : s + chunk] = z.gather(-1, safe[s : s + chunk, None]).squeeze(-1) - z.logsumexp(-1)
    return torch.where(ids != ignore_index, logp, 0.0)


def head_grads_float64(x, w, ids, loss_of_logp, chunk=1024):
    """float64 gradients of ``loss_of_logp(logp)`` for a head: the per-token ``g = dloss/dlogp``
    by autograd, then ``dlogits = g (onehot - softmax)`` per chunk (0 at ignored tokens)."""
    leaf = logp_float64(x, w, ids, chunk=chunk).requires_grad_()
    (g,) = torch.autograd.grad(loss_of_logp(leaf), leaf)
    g = torch.where(ids >= 0, g, 0.0).reshape(-1, 1)
    safe = ids.clamp(min=0)
    grad_x, grad_w = torch.empty_like(x), torch.zeros_like(w)
    for s in range(0, x.shape[0], chunk):
        d = -torch.softmax(x[s : s + chunk] @ w.T, -1) * g[s : s + chunk]
        d.scatter_add_(-1, safe[s : s + chunk, None], g[s : s + chunk])
        grad_x[s : s + chunk] = d @ w
        grad_w.addmm_(d.T, x[s : s + chunk])
    return grad_x, grad_w


# ----------------------------------------------------------------------------- GRPO

# Issue 12: 8 completions of 1024 tokens, H=4096, V=128256, bf16, dapo, token-level importance
# sampling, beta=0.04 with the reference log-probs given (no reference head), on-policy (no old
# log-probs, as TRL with num_iterations=1).
GRPO = dict(loss_type="dapo", beta=0.04, epsilon_low=0.2, epsilon_high=0.2, temperature=1.0)


def grpo_inputs(s, device):
    g = torch.Generator(device=device).manual_seed(0)  # on the device: fast, the same in the peer's process
    b, t, h, v = s["B"], s["T"], s["H"], s["V"]
    x = torch.randn(b, t, h, generator=g, device=device).bfloat16().requires_grad_()
    w = (torch.randn(v, h, generator=g, device=device) / math.sqrt(h)).bfloat16().requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=g, device=device)
    mask = torch.ones(b, t, dtype=torch.int64, device=device)
    mask[0, t - t // 4 :] = 0  # one shorter completion
    adv = torch.randn(b, generator=g, device=device)
    ref = torch.randn(b, t, generator=g, device=device) * 0.1 - math.log(v)
    return dict(x=x, w=w, ids=ids, mask=mask, adv=adv, ref=ref)


def grpo_reference(i):
    """float64 gradients of x and w (temperature 1)."""
    from liger_kernel.ops.grpo_loss import GRPOOptions, grpo_loss_from_logps, grpo_norm

    opts = GRPOOptions(GRPO["loss_type"], GRPO["beta"], GRPO["epsilon_low"], GRPO["epsilon_high"])

    def loss(logp):
        logp = logp.view(i["ids"].shape)
        return grpo_loss_from_logps(logp, i["mask"], i["adv"].double(), None, i["ref"].double(), None, opts,
                                    grpo_norm(i["mask"]))[0]  # fmt: skip

    x = i["x"].detach().reshape(-1, i["x"].shape[-1]).double()
    grad_x, grad_w = head_grads_float64(x, i["w"].detach().double(), i["ids"].reshape(-1), loss)
    return {"x": grad_x.view(i["x"].shape).cpu(), "w": grad_w.cpu()}


BENCHES["grpo"] = Bench(
    shape=dict(B=8, T=1024, H=4096, V=128256),
    smoke_shape=dict(B=2, T=16, H=32, V=67),
    inputs=grpo_inputs,
    tokens=lambda s: s["B"] * s["T"],
    flops=lambda s: 6 * s["B"] * s["T"] * s["H"] * s["V"],
    grads=("x", "w"),
    reference=grpo_reference,
)


def plain_grpo(i):
    """TRL's path without Liger: logits materialized, fp32 log-softmax, the loss head."""
    from liger_kernel.ops.grpo_loss import GRPOOptions, grpo_loss_from_logps, grpo_norm

    logits = (i["x"] @ i["w"].T).float() / GRPO["temperature"]
    logp = logits.gather(-1, i["ids"].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    opts = GRPOOptions(GRPO["loss_type"], GRPO["beta"], GRPO["epsilon_low"], GRPO["epsilon_high"])
    loss, _ = grpo_loss_from_logps(logp, i["mask"], i["adv"], None, i["ref"], None, opts, grpo_norm(i["mask"]))
    return loss


@provider("grpo", "ours")
def ours_grpo(i):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    return LigerFusedLinearGRPOLoss(**GRPO)(i["x"], i["w"], i["ids"], i["mask"], i["adv"], None, i["ref"])[0]


FLP = "liger_kernel.ops.fused_linear_logprobs"
PREF = "liger_kernel.chunked_loss.fused_linear_preference"
# fp32 chunk logits (2 sequences per 1 GiB chunk, as before the input-dtype logits)
variant("grpo", "ours-fp32", ours_grpo, {FLP: dict(ONE_PASS_LOGITS_IN_INPUT_DTYPE=False)})
# 2 sequences per chunk of bf16 logits: ~0.5 GB less peak memory, one accumulation more
variant("grpo", "ours-512M", ours_grpo, {"liger_kernel.ops.fused_linear_ppo": dict(ROWS_BUDGET_BYTES=512 * 2**20)})
provider("grpo", "plain")(plain_grpo)


_compiled = {}


def compiled(name, plain):
    """``torch.compile`` of a plain path (compiled on first use)."""

    def run(i):
        if name not in _compiled:
            _compiled[name] = torch.compile(plain)
        return _compiled[name](i)

    BENCHES[name].providers["compile"] = run


@provider("grpo", "liger085")
def liger085_grpo(i):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # the peer, in its own process

    return LigerFusedLinearGRPOLoss(**GRPO)(i["x"], i["w"], i["ids"], i["mask"], i["adv"], None, i["ref"])[0]


# ----------------------------------------------------------------------------- DPO

# Issue 12: 4 chosen/rejected pairs of 1024 tokens (the first 128 a prompt), H=4096, V=128256,
# bf16, a frozen reference head, sigmoid loss, beta=0.1 (the DPO module's defaults: no NLL term,
# summed log-probs).
DPO_BETA = 0.1


def dpo_inputs(s, device):
    g = torch.Generator(device=device).manual_seed(0)
    b, t, h, v = s["B"], s["T"], s["H"], s["V"]
    x = torch.randn(2 * b, t, h, generator=g, device=device)
    w = torch.randn(v, h, generator=g, device=device) / math.sqrt(h)
    ids = torch.randint(0, v, (2 * b, t), generator=g, device=device)
    ids[:, : t // 8] = -100  # a prompt
    ref_x = (x + 0.1 * torch.randn(x.shape, generator=g, device=device)).bfloat16()
    ref_w = (w + 0.01 * torch.randn(w.shape, generator=g, device=device)).bfloat16()
    x, w = x.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    return dict(x=x, w=w, ids=ids, ref_x=ref_x, ref_w=ref_w)


def dpo_loss_of_seq_logps(pol, ref):
    n = pol.shape[0] // 2
    logits = (pol[:n] - pol[n:]) - (ref[:n] - ref[n:])
    return -torch.nn.functional.logsigmoid(DPO_BETA * logits).mean()


def dpo_reference(i):
    """float64 gradients of x and w: the textbook DPO on float64 logits of both heads."""
    ids = i["ids"].reshape(-1)
    flat = {k: i[k].detach().reshape(-1, i[k].shape[-1]).double() for k in ("x", "w", "ref_x", "ref_w")}
    ref = logp_float64(flat["ref_x"], flat["ref_w"], ids).view(i["ids"].shape).sum(-1)
    grad_x, grad_w = head_grads_float64(
        flat["x"], flat["w"], ids, lambda logp: dpo_loss_of_seq_logps(logp.view(i["ids"].shape).sum(-1), ref)
    )
    return {"x": grad_x.view(i["x"].shape).cpu(), "w": grad_w.cpu()}


BENCHES["dpo"] = Bench(
    shape=dict(B=4, T=1024, H=4096, V=128256),
    smoke_shape=dict(B=2, T=16, H=32, V=67),
    inputs=dpo_inputs,
    tokens=lambda s: 2 * s["B"] * s["T"],
    flops=lambda s: 8 * 2 * s["B"] * s["T"] * s["H"] * s["V"],
    grads=("x", "w"),
    reference=dpo_reference,
)


@provider("dpo", "plain")
def plain_dpo(i):
    """TRL's path without Liger: bf16 logits materialized, fp32 log-softmax, gather, the loss."""

    def seq_logps(h, weight):
        logits = (h @ weight.T).float()
        tok = torch.log_softmax(logits, -1).gather(-1, i["ids"].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (tok * (i["ids"] != -100)).sum(-1)

    with torch.no_grad():
        ref = seq_logps(i["ref_x"], i["ref_w"])
    return dpo_loss_of_seq_logps(seq_logps(i["x"], i["w"]), ref)


@provider("dpo", "ours")
def ours_dpo(i):
    """The whole-batch route (the batch's bf16 logits kept vocabulary-major, no fp32 accumulator:
    ~2.30 GB expected), the reference head through the same matmul calls."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    return LigerFusedLinearDPOLoss(beta=DPO_BETA)(i["w"], i["x"], i["ids"], None, i["ref_x"], i["ref_w"])[0]


@provider("dpo", "liger085")
def liger085_dpo(i):
    return ours_dpo(i)  # the peer's module of the same name, in its own process


# fp32 logits in both heads (the reference's follow the policy's), one pair per 1 GiB chunk (main's
# route with the shared, in-place-rounded weight-gradient accumulator): ~3.1 GB expected
variant(
    "dpo", "ours-fp32", ours_dpo,
    {FLP: dict(ONE_PASS_LOGITS_IN_INPUT_DTYPE=False),
     PREF: dict(ONE_PASS_BUDGET_BYTES=2**30)},
)  # fmt: skip
# the one-pass route (one pair a chunk of bf16 logits, its rows gathered: one accumulation per fp32
# half a pair): ~2.71 GB expected
variant("dpo", "ours-1pass", ours_dpo, {PREF: dict(WHOLE_BATCH_FOR_EVERY_LOSS=False)})
# two pairs per chunk of bf16 logits: half the accumulations of the weight gradient, ~0.5 GB more
variant("dpo", "ours-2pairs", ours_dpo, {PREF: dict(ONE_PASS_BUDGET_BYTES=2**30, WHOLE_BATCH_FOR_EVERY_LOSS=False)})


@provider("dpo", "ours-2pass")
def ours_dpo_two_passes(i):
    """The two-pass route (logits recomputed per vocabulary tile in backward): 10NHV, ~1.2 GB."""
    from liger_kernel.chunked_loss.fused_linear_preference import LigerFusedLinearPreferenceBase

    saved, LigerFusedLinearPreferenceBase.one_pass = LigerFusedLinearPreferenceBase.one_pass, False
    try:
        return ours_dpo(i)
    finally:
        LigerFusedLinearPreferenceBase.one_pass = saved


# ----------------------------------------------------------------------------- JSD distillation

# Issue 12: 8192 tokens, H=4096, V=128256, bf16, a student head (trained) and a teacher head
# (forward only), loss 0.5 CE + 0.5 JSD_beta (the module's defaults, beta=0.5).
JSD_BETA = 0.5


def jsd_inputs(s, device):
    g = torch.Generator(device=device).manual_seed(0)
    n, h, v = s["N"], s["H"], s["V"]
    x = torch.randn(n, h, generator=g, device=device).bfloat16().requires_grad_()
    w = (torch.randn(v, h, generator=g, device=device) * (3 / math.sqrt(h))).bfloat16().requires_grad_()
    xt = torch.randn(n, h, generator=g, device=device).bfloat16()
    wt = (torch.randn(v, h, generator=g, device=device) * (3 / math.sqrt(h))).bfloat16()
    y = torch.randint(0, v, (n,), generator=g, device=device)
    return dict(x=x, w=w, xt=xt, wt=wt, y=y)


def generalized_jsd_loss(student_logits, teacher_logits, labels, beta):
    """TRL 0.24.0 ``GKDTrainer.generalized_jsd_loss`` (reduction "batchmean", temperature 1)."""
    student_log_probs = torch.log_softmax(student_logits, dim=-1)
    teacher_log_probs = torch.log_softmax(teacher_logits, dim=-1)
    beta = torch.tensor(beta, dtype=student_log_probs.dtype)
    mixture_log_probs = torch.logsumexp(
        torch.stack([student_log_probs + torch.log(1 - beta), teacher_log_probs + torch.log(beta)]), dim=0
    )
    kl = torch.nn.functional.kl_div
    kl_teacher = kl(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
    kl_student = kl(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def jsd_reference(i, chunk=1024):
    """float64 gradients of ``0.5 CE + 0.5 JSD`` (mean over tokens) in token chunks; the teacher
    logits as its ``lm_head`` gives them (bf16), the student's exact."""
    x64, w64 = (i[k].detach().double() for k in ("x", "w"))
    gx, gw = torch.empty_like(x64), torch.zeros_like(w64)
    n = x64.shape[0]
    for s in range(0, n, chunk):
        z = (x64[s : s + chunk] @ w64.T).requires_grad_()
        zt = (i["xt"][s : s + chunk] @ i["wt"].T).double()
        y = i["y"][s : s + chunk]
        loss = (
            torch.nn.functional.cross_entropy(z, y, reduction="sum")
            + generalized_jsd_loss(z, zt, y, JSD_BETA) * (z.shape[0])
        )
        (g,) = torch.autograd.grad(loss * (0.5 / n), z)
        gx[s : s + chunk] = g @ w64
        gw.addmm_(g.T, x64[s : s + chunk])
    return {"x": gx.cpu(), "w": gw.cpu()}


BENCHES["jsd"] = Bench(
    shape=dict(N=8192, H=4096, V=128256),
    smoke_shape=dict(N=32, H=32, V=67),
    inputs=jsd_inputs,
    tokens=lambda s: s["N"],
    flops=lambda s: 8 * s["N"] * s["H"] * s["V"],
    grads=("x", "w"),
    reference=jsd_reference,
)


@provider("jsd", "plain")
def plain_jsd(i):
    """What TRL's GKD trainer does without Liger: bf16 logits of both heads, its generalized JSD,
    plus PyTorch's cross-entropy (so that both compute one loss)."""
    z = i["x"] @ i["w"].T
    with torch.no_grad():
        zt = i["xt"] @ i["wt"].T
    return 0.5 * torch.nn.functional.cross_entropy(z, i["y"]) + 0.5 * generalized_jsd_loss(z, zt, i["y"], JSD_BETA)


@provider("jsd", "ours")
def ours_jsd(i):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    return LigerFusedLinearJSDLoss(beta=JSD_BETA)(i["x"], i["w"], i["xt"], i["wt"], i["y"])


@provider("jsd", "liger085")
def liger085_jsd(i):
    return ours_jsd(i)  # the peer's module of the same name, in its own process


DISTILL = "liger_kernel.chunked_loss.fused_linear_distillation"
# teacher sub-chunks of 1024 rows (the teacher's logits matmul at M=1024): 66 MB more
variant("jsd", "ours-L1024", ours_jsd, {DISTILL: dict(LOGITS_BUDGET_BYTES=256 * 2**20)})
# teacher sub-chunks of 384 rows: 98 MB less
variant("jsd", "ours-L384", ours_jsd, {DISTILL: dict(LOGITS_BUDGET_BYTES=96 * 2**20)})
# 4096-token blocks: half the weight-gradient accumulator's traffic, 525 MB more (above Liger's memory)
variant("jsd", "ours-K4096", ours_jsd, {DISTILL: dict(MIN_BLOCK_TOKENS=4096)})


compiled("grpo", plain_grpo)
compiled("dpo", plain_dpo)
compiled("jsd", plain_jsd)


# ----------------------------------------------------------------------------- every loss type (--sweep)


def sweep_dpo(loss_type):
    def run(i):
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        module = LigerFusedLinearDPOLoss(beta=DPO_BETA, loss_type=loss_type)
        return module(i["w"], i["x"], i["ids"], None, i["ref_x"], i["ref_w"])[0]

    return run


def sweep_grpo(loss_type):
    def run(i):
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        opts = dict(GRPO, loss_type=loss_type, max_completion_length=i["ids"].shape[1])
        if loss_type == "cispo":
            opts["epsilon_high"] = 5.0  # cispo caps the ratio itself: a cap above 1
        return LigerFusedLinearGRPOLoss(**opts)(i["x"], i["w"], i["ids"], i["mask"], i["adv"], None, i["ref"])[0]

    return run


def register_sweep():
    """Providers ``type=<loss_type>``: ours with each DPO and GRPO loss type (no error columns:
    the float64 references are of the default types), for "each loss type within 10% of the
    fastest of its family"."""
    from liger_kernel.chunked_loss.dpo_loss import DPO_LOSS_TYPES
    from liger_kernel.ops.grpo_loss import LOSS_TYPES

    for t in DPO_LOSS_TYPES:
        BENCHES["dpo"].providers[f"type={t}"] = sweep_dpo(t)
    for t in LOSS_TYPES:
        BENCHES["grpo"].providers[f"type={t}"] = sweep_grpo(t)
    return [f"type={t}" for t in (*DPO_LOSS_TYPES, *LOSS_TYPES)]


# ----------------------------------------------------------------------------- harness


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(fn, inputs, grads):
    for k in grads:
        inputs[k].grad = None
    loss = fn(inputs)
    loss.backward()
    return loss


def time_ms(step, device, quick=False):
    if device == "cuda":
        from triton.testing import do_bench

        est = do_bench(step, warmup=5, rep=1, return_mode="median")
        if quick:  # the loss-type sweep: ~10 calls
            warmup, rep = 2 * est, max(10 * est, 150)
        else:  # 25 calls, at least 300 ms, at most 4 s (the peer's 467 ms GRPO: 8 calls)
            warmup, rep = min(max(25, int(5 * est)), 1000), min(max(25 * est, 300), 4000)
        return do_bench(step, warmup=warmup, rep=rep, return_mode="median")
    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    return (time.perf_counter() - start) / 3 * 1e3


def error_ratios(actual, reference):
    """Max and rms error over those of rounding the float64 result once to ``actual``'s dtype
    (1.00 = one rounding)."""
    ref = reference.to(actual.device)
    err = actual.double() - ref
    once = ref.to(actual.dtype).double() - ref
    return round((err.abs().max() / once.abs().max()).item(), 3), round((err.norm() / once.norm()).item(), 3)


def measure(name, providers, shape, device, record, errors=False, quick=False, warm_only=False):
    """One row per provider of loss ``name``, each handed to ``record`` as soon as it is measured.
    ``warm_only``: only the first call (compilation, caches on disk), its seconds as the row."""
    bench = BENCHES[name]
    inputs = bench.inputs(shape, device)
    reference = bench.reference(inputs) if errors and bench.reference else None
    for prov in providers:
        row = {"loss": name, "provider": prov}
        try:
            fn = bench.providers[prov]
            start = time.perf_counter()
            fwd_bwd(fn, inputs, bench.grads)  # warm-up: compile, autotune, workspaces
            sync(device)
            if warm_only:
                record(dict(row, warm_s=round(time.perf_counter() - start, 1)))
                continue
            for k in bench.grads:
                inputs[k].grad = None
            sync(device)
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            loss = fwd_bwd(fn, inputs, bench.grads)
            sync(device)
            if device == "cuda":
                row["peak_extra_GB"] = round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)
            row["loss_value"] = float(loss.detach())
            row["grad_norms"] = {k: float(inputs[k].grad.float().norm()) for k in bench.grads}
            if reference is not None:
                row["err_max_rms"] = {k: error_ratios(inputs[k].grad, reference[k]) for k in bench.grads}
            row["ms"] = round(time_ms(functools.partial(fwd_bwd, fn, inputs, bench.grads), device, quick), 2)
        except Exception as e:  # recorded; the next provider still runs
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        record(row)


def matmul_rate(n, shape, device):
    """bf16 TFLOP/s of the forward's logits matmul [n, H] @ [H, V]."""
    if device != "cuda":
        return None
    from triton.testing import do_bench

    a = torch.randn(n, shape["H"], device=device).bfloat16()
    b = torch.randn(shape["V"], shape["H"], device=device).bfloat16()
    return 2 * n * shape["H"] * shape["V"] / do_bench(lambda: a @ b.T, warmup=100, rep=500) / 1e9


def run_peer(args, peers, record):
    """The peer providers in a child process with the peer's ``liger_kernel`` first on PYTHONPATH,
    each row recorded as the child prints it (a timeout keeps the rows already measured)."""
    env = dict(os.environ)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO / "src"]
    env["PYTHONPATH"] = os.pathsep.join([str(PEER_PATH), *rest])
    cmd = [sys.executable, __file__, "--worker", "--losses", args.losses, "--providers", ",".join(peers)]
    cmd += ["--smoke"] * args.smoke + ["--warm-only"] * args.warm_only  # no error columns: they import ours
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO) as child:
        got = 0
        for line in child.stdout:
            if line.startswith("{"):
                record(dict({"loss": "-"}, **json.loads(line)))
                got += 1
    if child.returncode != 0 and not got:
        record({"loss": "-", "provider": ",".join(peers), "error": f"peer process exited {child.returncode}"})


class Results:
    """The rows so far and the run's metadata, printed as they come and rewritten to ``path`` (when
    given) after each row, so that a run cut short keeps what it measured."""

    def __init__(self, path, meta):
        self.path, self.meta, self.rows = path, meta, []

    def record(self, row):
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            with open(self.path, "w") as f:
                json.dump({"meta": self.meta, "rows": self.rows}, f, indent=1)


def print_table(meta, rows):
    print(f"\n{meta['device']}, torch {meta['torch']}")
    print(
        f"{'loss':6} {'provider':12} {'fwd+bwd ms':>10} {'floor/ms':>8} {'peak GB':>8}  loss, grad norms, "
        "grad error max/rms over one rounding"
    )
    for r in sorted(rows, key=lambda r: r["loss"]):  # stable: each loss's providers in run order
        floor = meta.get(r["loss"], {}).get("floor_ms")
        if "error" in r:
            print(f"{r['loss']:6} {r['provider']:12} {r['error']}")
            continue
        frac = f"{floor / r['ms']:.2f}" if floor else "-"
        norms = " ".join(f"{k}={v:.4g}" for k, v in r["grad_norms"].items())
        errs = " ".join(f"{k} {m}/{q}" for k, (m, q) in r.get("err_max_rms", {}).items())
        print(
            f"{r['loss']:6} {r['provider']:12} {r['ms']:>10} {frac:>8} {r.get('peak_extra_GB', '-')!s:>8}  "
            f"{r['loss_value']:.6g} {norms}  {errs}"
        )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--losses", default="dpo,grpo,jsd")
    p.add_argument(
        "--providers",
        default="ours,plain,compile,liger085",
        help="comma-separated; each loss runs those it has (also: ours-fp32, ours-512M, ours-1pass, ours-2pairs, "
        "ours-2pass, ours-L1024, ours-L384, ours-K4096)",
    )
    p.add_argument("--sweep", action="store_true", help="also ours with every DPO and GRPO loss type (type=...)")
    p.add_argument("--out", default=None, help="folder for the results (--name)")
    p.add_argument("--name", default="post_training.json", help="results file name in --out")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU: the interpreter)")
    p.add_argument("--no-errors", action="store_true", help="skip the float64 reference and the error columns")
    p.add_argument(
        "--warm-only", action="store_true", help="only the first call of each provider (fills the compile caches)"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    losses = args.losses.split(",")
    shapes = {name: BENCHES[name].smoke_shape if args.smoke else BENCHES[name].shape for name in losses}
    wanted = args.providers.split(",")
    sweep = register_sweep() if args.sweep else []
    if args.worker:  # the peer's providers, rows on stdout
        for name in losses:
            mine = [q for q in wanted if q in BENCHES[name].providers]
            measure(name, mine, shapes[name], device, lambda row: print(json.dumps(row), flush=True),
                    warm_only=args.warm_only)  # fmt: skip
        return
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    for name in losses if not args.warm_only else ():
        rate = matmul_rate(BENCHES[name].tokens(shapes[name]), shapes[name], device)
        if rate:
            meta[name] = {
                "shape": shapes[name],
                "tflops": round(rate, 1),
                "floor_ms": round(BENCHES[name].flops(shapes[name]) / rate / 1e9, 2),
            }
    path = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, args.name)
    results = Results(path, meta)
    # In order of what matters most, so that a run cut short keeps it: ours and the plain path (with
    # the error columns), the peer (its own process), every loss type, torch.compile (slow to build).
    peers = [q for q in wanted if q in PEERS]
    first = [q for q in wanted if q not in PEERS and q != "compile"]
    for name in losses:
        mine = [q for q in first if q in BENCHES[name].providers]
        errors = not (args.no_errors or args.warm_only)
        measure(name, mine, shapes[name], device, results.record, errors=errors, warm_only=args.warm_only)
    if peers and not PEER_PATH.is_dir():
        results.record({"loss": "-", "provider": ",".join(peers), "error": f"{PEER_PATH} missing: setup_peers.sh"})
    elif peers:  # one child for every loss (one process start, one import of the peer)
        run_peer(args, peers, results.record)
    for name in losses:
        mine = [q for q in sweep if q in BENCHES[name].providers]
        if mine:
            measure(name, mine, shapes[name], device, results.record, quick=True, warm_only=args.warm_only)
    if "compile" in wanted:
        for name in losses:
            measure(name, ["compile"], shapes[name], device, results.record, warm_only=args.warm_only)
    if not args.warm_only:
        print_table(meta, results.rows)


if __name__ == "__main__":
    main()
