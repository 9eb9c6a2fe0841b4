"""What the benchmarks measure: for each op, its shapes, inputs, floor and provider functions.

Shared by every process of a run: `liger_kernel` here is whichever library the process was started
with (this repo's, or Liger Kernel 0.8.5 from `.peer/liger085`), reached only through the public
API names both offer. Nothing here touches a GPU at import time.

An op gives:
- ``sweeps(level)``: ``[Sweep]``, each a list of ``(x, params)`` points; ``anchor(level)``: the
  params of the shape the acceptance criteria name.
- ``inputs(p, device)``: ``(args, grad_idx, grad_outs)``: the call arguments, the indices of those
  that get gradients, and the upstream gradients (None for a scalar loss).
- ``floor(p)``: ``("bytes", n)`` for memory-bound ops or ``("flops", n)`` for matmul-bound ones,
  for one forward + backward.
- ``eager(p)``: the plain-PyTorch function (Hugging Face's math); ``compile`` is torch.compile of it.
- ``liger(p, provider)``: the function through the `liger_kernel` public API; ``provider`` is
  ``ours``, an ``ours_*`` variant or ``liger085``.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BF16 = torch.bfloat16
EPS = 1e-6
LEVELS = ("smoke", "quick", "default", "full")
BASE_PROVIDERS = ("ours", "liger085", "compile", "eager")


@dataclass
class Sweep:
    name: str  # e.g. "hidden"
    x_label: str  # axis label of the sweep variable
    points: list  # [(x, params)]


def pick(level, smoke, quick, default, full=None):
    """The sweep values for a size level: smoke (CPU, tiny) < quick < default < full."""
    return {"smoke": smoke, "quick": quick, "default": default, "full": full or default}[level]


def case_id(p: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in p.items())


def first(out):
    """The loss of a loss function that returns a tensor, a (loss, extras...) tuple or an output
    object with a ``loss`` field (``CrossEntropyOutput``)."""
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "loss", out)


def _randn(shape, device, dtype=BF16, scale=1.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype)


class Op:
    name = ""
    title = ""
    notes = {}  # provider -> note shown in the report
    extra_providers = ()  # beyond BASE_PROVIDERS

    @property
    def providers(self):
        return BASE_PROVIDERS + tuple(self.extra_providers)

    def cases(self, level):
        """Unique (case_id, params) over all sweeps, anchor first."""
        seen = {}
        anchor = self.anchor(level)
        seen[case_id(anchor)] = anchor
        for sw in self.sweeps(level):
            for _, p in sw.points:
                seen.setdefault(case_id(p), p)
        return list(seen.items())

    def shape_str(self, p):
        return "x".join(str(v) for v in p.values())


class _Norm(Op):
    def sweeps(self, level):
        rows = pick(level, 37, 16384, 16384)
        hidden = pick(level, (64, 96, 200), (1024, 4096, 16384), (1024, 2048, 4096, 8192, 16384))
        return [Sweep("hidden", "hidden size", [(h, {"rows": rows, "hidden": h}) for h in hidden])]

    def anchor(self, level):
        return {"rows": pick(level, 37, 16384, 16384), "hidden": pick(level, 96, 4096, 4096)}

    def floor(self, p):
        # forward reads X and writes Y, backward reads X and dY and writes dX: 5 passes of X
        return "bytes", 5 * p["rows"] * p["hidden"] * 2

    def shape_str(self, p):
        return f"{p['rows']}x{p['hidden']}"


class RMSNorm(_Norm):
    name = "rms_norm"
    title = "RMSNorm (bf16, llama casting, eps 1e-6; fwd reads X, writes Y; bwd gives dX, dW)"
    notes = {
        "ours": "in_place=True, grad_output_unshared=True: dX written into dY, as at a patched pre-norm site",
        "ours_safe": "defaults: dX in a new buffer (the caller may still read dY)",
        "liger085": "defaults (in_place=True: dX written into dY)",
    }
    extra_providers = ("ours_safe",)

    def inputs(self, p, device):
        x = _randn((p["rows"], p["hidden"]), device).requires_grad_()
        w = (1.0 + _randn((p["hidden"],), device, torch.float32, 0.1)).to(BF16).requires_grad_()
        return [x, w], [0, 1], [_randn((p["rows"], p["hidden"]), device)]

    def eager(self, p):
        def llama_rms_norm(x, w):  # LlamaRMSNorm.forward
            h = x.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
            return w * h.to(x.dtype)

        return llama_rms_norm

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_rms_norm

        if provider == "ours":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction

            return lambda x, w: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", True, None, True)
        return lambda x, w: liger_rms_norm(x, w, EPS)


class LayerNorm(_Norm):
    name = "layer_norm"
    title = "LayerNorm with bias (bf16, eps 1e-6; bwd gives dX, dW, dB)"

    def inputs(self, p, device):
        x = _randn((p["rows"], p["hidden"]), device).requires_grad_()
        w = (1.0 + _randn((p["hidden"],), device, torch.float32, 0.1)).to(BF16).requires_grad_()
        b = _randn((p["hidden"],), device, scale=0.1).requires_grad_()
        return [x, w, b], [0, 1, 2], [_randn((p["rows"], p["hidden"]), device)]

    def eager(self, p):
        return lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, EPS)  # nn.LayerNorm

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_layer_norm

        return lambda x, w, b: liger_layer_norm(x, w, b, EPS)


class Rope(Op):
    name = "rope"
    title = "RoPE, HF rotate_half layout (bf16, q [B,Hq,T,D], k [B,Hq/4,T,D], cos/sin [1,T,D])"

    def _p(self, level, t, hq):
        return {"B": pick(level, 2, 4, 4), "Hq": hq, "Hk": max(hq // 4, 1), "T": t, "D": pick(level, 16, 128, 128)}

    def sweeps(self, level):
        ts = pick(level, (24, 40), (1024, 4096, 8192), (1024, 2048, 4096, 8192))
        hqs = pick(level, (4, 8), (8, 32, 128), (8, 16, 32, 64, 128))
        a = self.anchor(level)
        return [
            Sweep("seq", "sequence length T", [(t, self._p(level, t, a["Hq"])) for t in ts]),
            Sweep("heads", "hidden size Hq*D", [(h * a["D"], self._p(level, a["T"], h)) for h in hqs]),
        ]

    def anchor(self, level):
        return self._p(level, pick(level, 40, 4096, 4096), pick(level, 8, 32, 32))

    def shape_str(self, p):
        return f"q[{p['B']},{p['Hq']},{p['T']},{p['D']}] k[{p['B']},{p['Hk']},{p['T']},{p['D']}]"

    def floor(self, p):
        # forward reads and writes q and k, backward the same for dq and dk: 4 passes of q + k
        return "bytes", 4 * p["B"] * (p["Hq"] + p["Hk"]) * p["T"] * p["D"] * 2

    def inputs(self, p, device):
        B, Hq, Hk, T, D = p["B"], p["Hq"], p["Hk"], p["T"], p["D"]
        q = _randn((B, Hq, T, D), device).requires_grad_()
        k = _randn((B, Hk, T, D), device).requires_grad_()
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
        freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)[None]
        cos, sin = emb.cos().to(BF16), emb.sin().to(BF16)
        return [q, k, cos, sin], [0, 1], [_randn(q.shape, device), _randn(k.shape, device)]

    def eager(self, p):
        def rotate_half(x):
            x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
            return torch.cat((-x2, x1), dim=-1)

        def apply_rotary_pos_emb(q, k, cos, sin):  # transformers' llama apply_rotary_pos_emb
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        return apply_rotary_pos_emb

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_rope

        return lambda q, k, cos, sin: liger_rope(q, k, cos, sin)


class _Gated(Op):
    extra_providers = ("ours_out",)
    notes = {
        "ours": "Function defaults (a, b are leaves here: never overwritten, so da, db are new tensors)",
        "ours_out": "in_place=False: fresh da, db",
    }

    def sweeps(self, level):
        cols = pick(level, 150, 14336, 14336)
        rows = pick(level, (8, 24, 40), (2048, 8192, 32768), (2048, 4096, 8192, 16384, 32768))
        return [Sweep("rows", "rows (tokens)", [(r, {"rows": r, "cols": cols}) for r in rows])]

    def anchor(self, level):
        return {"rows": pick(level, 24, 8192, 8192), "cols": pick(level, 150, 14336, 14336)}

    def shape_str(self, p):
        return f"{p['rows']}x{p['cols']}"

    def floor(self, p):
        # forward reads a, b and writes c; backward reads dc, a, b and writes da, db: 8 passes
        return "bytes", 8 * p["rows"] * p["cols"] * 2

    def inputs(self, p, device):
        shape = (p["rows"], p["cols"])
        a, b = _randn(shape, device).requires_grad_(), _randn(shape, device).requires_grad_()
        return [a, b], [0, 1], [_randn(shape, device)]

    def liger(self, p, provider):
        if provider == "ours":
            import liger_kernel.ops.geglu as geglu
            import liger_kernel.ops.swiglu as swiglu

            if self.name == "swiglu":
                return lambda a, b: swiglu.LigerSiLUMulFunction.apply(a, b)
            return lambda a, b: geglu.LigerGELUMulFunction.apply(a, b)
        if provider == "ours_out":
            from liger_kernel.ops.geglu import LigerGELUMulFunction
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction

            if self.name == "swiglu":
                return lambda a, b: LigerSiLUMulFunction.apply(a, b, 1.0, 1.0, False)
            return lambda a, b: LigerGELUMulFunction.apply(a, b, False)
        from liger_kernel.transformers.functional import liger_geglu, liger_swiglu

        return liger_swiglu if self.name == "swiglu" else liger_geglu


class SwiGLU(_Gated):
    name = "swiglu"
    title = "SwiGLU silu(a) * b (bf16)"

    def eager(self, p):
        return lambda a, b: F.silu(a) * b  # LlamaMLP's act_fn(gate) * up


class GeGLU(_Gated):
    name = "geglu"
    title = "GeGLU gelu_tanh(a) * b (bf16)"

    def eager(self, p):
        return lambda a, b: F.gelu(a, approximate="tanh") * b  # GemmaMLP


class ReLUSquared(Op):
    """Nemotron's MLP activation on the up projection's output [tokens, intermediate]."""

    name = "relu_squared"
    title = "ReLU² relu(x)^2 (bf16), Nemotron-4 15B's intermediate 24576"

    def sweeps(self, level):
        cols = pick(level, 150, 24576, 24576)
        rows = pick(level, (8, 24, 40), (2048, 8192, 16384), (2048, 4096, 8192, 16384))
        return [Sweep("rows", "rows (tokens)", [(r, {"rows": r, "cols": cols}) for r in rows])]

    def anchor(self, level):
        return {"rows": pick(level, 24, 8192, 8192), "cols": pick(level, 150, 24576, 24576)}

    def shape_str(self, p):
        return f"{p['rows']}x{p['cols']}"

    def floor(self, p):
        # forward reads x and writes y; backward reads x, dy and writes dx: 5 passes
        return "bytes", 5 * p["rows"] * p["cols"] * 2

    def inputs(self, p, device):
        shape = (p["rows"], p["cols"])
        return [_randn(shape, device).requires_grad_()], [0], [_randn(shape, device)]

    def eager(self, p):
        return lambda x: F.relu(x).square()  # transformers' ReLUSquaredActivation

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_relu_squared

        return liger_relu_squared


class CrossEntropy(Op):
    name = "cross_entropy"
    title = "Cross-entropy on bf16 logits [tokens, vocab], mean reduction"
    notes = {"eager": "HF: F.cross_entropy(logits.float(), target)"}

    def sweeps(self, level):
        n = pick(level, 40, 8192, 8192)
        vocab = pick(level, (100, 333), (32000, 128256, 256000), (32000, 128256, 151936, 256000))
        return [Sweep("vocab", "vocab size", [(v, {"N": n, "V": v}) for v in vocab])]

    def anchor(self, level):
        return {"N": pick(level, 40, 8192, 8192), "V": pick(level, 333, 128256, 128256)}

    def shape_str(self, p):
        return f"{p['N']}x{p['V']}"

    def floor(self, p):
        # read the logits in the forward, read and write them (the gradient) once more: 3 passes
        return "bytes", 3 * p["N"] * p["V"] * 2

    def inputs(self, p, device):
        logits = _randn((p["N"], p["V"]), device).requires_grad_()
        target = torch.randint(0, p["V"], (p["N"],), device=device)
        return [logits, target], [0], None

    def eager(self, p):
        return lambda logits, target: F.cross_entropy(logits.float(), target)

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_cross_entropy

        return lambda logits, target: first(liger_cross_entropy(logits, target))


class FusedLinearCrossEntropy(Op):
    name = "fused_linear_cross_entropy"
    title = "Fused linear cross-entropy: loss of x [N,H] @ W[V,H].T without logits (bf16, mean)"
    extra_providers = ("ours_fast", "cce")
    notes = {
        "ours": "defaults: exact (every gradient one fp32 accumulator rounded once), 8NHV",
        "ours_fast": "accum_dtype=torch.bfloat16: the fast token-chunk path, accumulating in bf16 as Liger 0.8.5",
        "eager": "HF: logits = x @ W.T; F.cross_entropy(logits.float(), target)",
        "cce": "Apple cut-cross-entropy 25.1.1 linear_cross_entropy, defaults",
    }

    def _p(self, level, n, v):
        return {"N": n, "H": pick(level, 24, 4096, 4096), "V": v}

    def sweeps(self, level):
        a = self.anchor(level)
        ns = pick(
            level, (16, 40), (2048, 8192), (1024, 2048, 4096, 8192, 16384), (1024, 2048, 4096, 8192, 16384, 32768)
        )
        vs = pick(level, (100, 333), (32000, 128256, 256000), (32000, 128256, 151936, 256000))
        return [
            Sweep("tokens", "tokens N", [(n, self._p(level, n, a["V"])) for n in ns]),
            Sweep("vocab", "vocab size V", [(v, self._p(level, a["N"], v)) for v in vs]),
        ]

    def anchor(self, level):
        return self._p(level, pick(level, 40, 8192, 8192), pick(level, 333, 128256, 128256))

    def shape_str(self, p):
        return f"N{p['N']} H{p['H']} V{p['V']}"

    def floor(self, p):
        # logits x W^T (2NHV), grad input (2NHV), grad weight (2NHV)
        return "flops", 6 * p["N"] * p["H"] * p["V"]

    def inputs(self, p, device):
        x = _randn((p["N"], p["H"]), device).requires_grad_()
        w = _randn((p["V"], p["H"]), device, scale=1.0 / math.sqrt(p["H"])).requires_grad_()
        target = torch.randint(0, p["V"], (p["N"],), device=device)
        return [x, w, target], [0, 1], None

    def eager(self, p):
        return lambda x, w, target: F.cross_entropy((x @ w.T).float(), target)

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as flce

        if provider == "liger085":
            return lambda x, w, target: first(flce(x, w, target))
        accum = torch.bfloat16 if provider == "ours_fast" else None  # all cases are bf16
        return lambda x, w, target: first(flce(x, w, target, accum_dtype=accum))

    def cce(self, p):
        from cut_cross_entropy import linear_cross_entropy

        return lambda x, w, target: linear_cross_entropy(x, w, target)


def _generalized_jsd(log_q, log_p, beta=0.5):
    """TRL's GKD ``generalized_jsd_loss`` (batchmean over tokens, no labels) on log-probabilities."""
    if beta == 0:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        log_m = torch.logsumexp(torch.stack([log_q + math.log(1 - beta), log_p + math.log(beta)]), dim=0)
        kl_p = F.kl_div(log_m, log_p, reduction="none", log_target=True)
        kl_q = F.kl_div(log_m, log_q, reduction="none", log_target=True)
        jsd = beta * kl_p + (1 - beta) * kl_q
    return jsd.sum() / jsd.shape[0]


class _Divergence(CrossEntropy):
    """A divergence of two [tokens, vocab] distributions (bf16; the cross-entropy's shapes); the
    gradient of the first."""

    log_inputs = True  # log-probabilities (else probabilities)
    functional = ""
    kwargs = {}
    notes = {}

    def floor(self, p):
        # forward reads both inputs; backward reads them again and writes the gradient: 5 passes
        return "bytes", 5 * p["N"] * p["V"] * 2

    def inputs(self, p, device):
        def dist(scale):
            z = _randn((p["N"], p["V"]), device, torch.float32, scale)
            return (z.log_softmax(-1) if self.log_inputs else z.softmax(-1)).to(BF16)

        return [dist(2.0).requires_grad_(), dist(1.0)], [0], None

    def liger(self, p, provider):
        import liger_kernel.transformers.functional as functional

        fn = getattr(functional, self.functional)
        return lambda x, y: fn(x, y, **self.kwargs)


class JSD(_Divergence):
    name = "jsd"
    title = "Generalized JSD (beta 0.5) of bf16 log-probabilities [tokens, vocab], batchmean"
    functional = "liger_jsd"
    notes = {"eager": "TRL GKD generalized_jsd_loss on the bf16 log-probabilities"}

    def eager(self, p):
        return _generalized_jsd


class KLDiv(_Divergence):
    name = "kl_div"
    title = "KL divergence of bf16 log-probabilities against bf16 probabilities, batchmean"
    functional = "liger_kl_div"
    log_inputs = False
    kwargs = {"reduction": "batchmean"}
    notes = {"eager": "F.kl_div(x.float(), y.float(), reduction='batchmean')"}

    def inputs(self, p, device):
        (x, y), grad_idx, grad_outs = super().inputs(p, device)
        return [x.detach().float().clamp_min(1e-30).log().to(BF16).requires_grad_(), y], grad_idx, grad_outs

    def eager(self, p):
        return lambda x, y: F.kl_div(x.float(), y.float(), reduction="batchmean")


class TVD(_Divergence):
    name = "tvd"
    title = "Total variation distance of bf16 probabilities [tokens, vocab], batchmean"
    functional = "liger_tvd"
    log_inputs = False
    kwargs = {"reduction": "batchmean"}
    notes = {"eager": "0.5 * (p.float() - q.float()).abs().sum() / tokens"}

    def eager(self, p):
        return lambda x, y: 0.5 * (x.float() - y.float()).abs().sum() / x.shape[0]


class FusedLinearJSD(Op):
    name = "fused_linear_jsd"
    title = "Fused linear JSD: student x [N,H] @ Ws[V,H].T vs a frozen teacher head (bf16, beta 0.5)"
    notes = {
        "ours": "defaults: fp32 logits per token chunk, fp32 weight-gradient accumulator rounded once",
        "eager": "materialized logits of both heads, float log-softmax, TRL's generalized_jsd_loss",
    }

    def _p(self, level, n, v):
        return {"N": n, "H": pick(level, 24, 4096, 4096), "V": v}

    def sweeps(self, level):
        a = self.anchor(level)
        ns = pick(level, (16, 40), (2048, 8192), (1024, 2048, 4096, 8192))
        return [Sweep("tokens", "tokens N", [(n, self._p(level, n, a["V"])) for n in ns])]

    def anchor(self, level):
        return self._p(level, pick(level, 40, 8192, 8192), pick(level, 333, 128256, 128256))

    def shape_str(self, p):
        return f"N{p['N']} H{p['H']} V{p['V']}"

    def floor(self, p):
        # student logits, grad input, grad weight (6NHV) and the teacher's logits (2NHV)
        return "flops", 8 * p["N"] * p["H"] * p["V"]

    def inputs(self, p, device):
        scale = 1.0 / math.sqrt(p["H"])
        xs = _randn((p["N"], p["H"]), device).requires_grad_()
        ws = _randn((p["V"], p["H"]), device, scale=scale).requires_grad_()
        xt, wt = _randn((p["N"], p["H"]), device), _randn((p["V"], p["H"]), device, scale=scale)
        return [xs, ws, xt, wt], [0, 1], None

    def eager(self, p):
        def jsd(xs, ws, xt, wt):
            log_q = (xs @ ws.T).float().log_softmax(-1)
            with torch.no_grad():
                log_p = (xt @ wt.T).float().log_softmax(-1)
            return _generalized_jsd(log_q, log_p)

        return jsd

    def liger(self, p, provider):
        from liger_kernel.transformers.functional import liger_fused_linear_jsd

        return liger_fused_linear_jsd


OPS = {
    op.name: op
    for op in (
        RMSNorm(),
        LayerNorm(),
        Rope(),
        SwiGLU(),
        GeGLU(),
        ReLUSquared(),
        CrossEntropy(),
        FusedLinearCrossEntropy(),
        JSD(),
        KLDiv(),
        TVD(),
        FusedLinearJSD(),
    )
}


def provider_fn(op: Op, p: dict, provider: str):
    """The callable a provider runs for one shape (torch.compile'd fresh for ``compile``)."""
    if provider == "eager":
        return op.eager(p)
    if provider == "compile":
        return torch.compile(op.eager(p), dynamic=False)
    if provider == "cce":
        return op.cce(p)
    return op.liger(p, provider)
