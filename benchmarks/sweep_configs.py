"""Launch-config sweeps on a GPU: CUDA-graph time of one fwd+bwd per configuration, each checked
against the default configuration's outputs and gradients (same inputs, max relative error).

    python benchmarks/sweep_configs.py norm-backward    # backward tile and grid per width
    python benchmarks/sweep_configs.py norm-wide        # backward of rows wider than one block
    python benchmarks/sweep_configs.py cross-entropy    # vocabulary block and warps

The numbers these gave are in benchmarks/NOTES.md.
"""

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import graph_time  # noqa: E402

import liger_kernel.ops.cross_entropy as ce  # noqa: E402
import liger_kernel.ops.norms as norms  # noqa: E402
from liger_kernel.transformers.functional import liger_cross_entropy, liger_layer_norm, liger_rms_norm  # noqa: E402


def timed_and_checked(fn, reference=None, fresh=None):
    """(graph ms of ``fn``, outputs of ``fresh or fn``, max relative difference of those outputs
    from ``reference`` (None without one)). ``fresh`` recomputes on unmodified inputs, for ops
    that overwrite their input when timed repeatedly."""
    outs = [t.detach().float().clone() for t in (fresh or fn)()]
    err = None
    if reference is not None:
        err = max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(outs, reference))
    return min(graph_time(fn) for _ in range(2)), outs, err


def _cell(label, ms, err, floor_ms=None):
    pct = f" ({floor_ms / ms:.0%})" if floor_ms else ""
    return f"{label} {ms * 1e3:7.1f}us{pct}" + ("" if err is None else f" err {err:.1e}")


def _norm_step(name, hidden):
    """One RMSNorm / LayerNorm fwd+bwd on fresh 16384 x ``hidden`` bf16 inputs."""
    x = torch.randn(16384, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def step():
        y = liger_rms_norm(x, w, 1e-6) if name == "rms" else liger_layer_norm(x, w, b, 1e-6)
        return (y, *torch.autograd.grad(y, [x, w] if name == "rms" else [x, w, b], dy.clone()))

    return step


@contextlib.contextmanager
def _norm_settings(**overrides):
    """``ops/norms.py``'s module constants overridden for the duration (its cached launch settings
    cleared around it)."""
    saved = {k: getattr(norms, k) for k in overrides}
    for k, v in overrides.items():
        setattr(norms, k, v)
    norms.clear_launch_caches()
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(norms, k, v)
        norms.clear_launch_caches()


def norm_backward():
    tiles = {
        "default": norms._backward_tile,
        "1 row": lambda n: n,
        "2 rows": lambda n: 2 * n,
        "4 rows": lambda n: 4 * n,
    }
    for hidden in (1024, 2048, 4096, 8192):
        for name in ("rms", "ln"):
            step, row, reference = _norm_step(name, hidden), [], None
            for label, tile in tiles.items():
                with _norm_settings(_backward_tile=tile):
                    ms, outs, err = timed_and_checked(step, reference)
                reference = reference or outs
                row.append(_cell(label, ms, err))
            print(f"{name} 16384x{hidden}: " + " | ".join(row), flush=True)


def norm_wide():
    """Rows wider than BWD_MAX_BLOCK: the whole row in one block, in column blocks with register
    sums (block width x warps), or looped with the sums added into memory."""
    configs = {
        "default": {},
        "1 block": dict(BWD_MAX_BLOCK=16384),
        "looped": dict(PARTS_MAX_COLS=0),
        "parts of 4096": dict(RMS_PART=4096, LN_PART=4096),
        "parts of 8192": dict(RMS_PART=8192, LN_PART=8192),
        "parts/8w": dict(PART_WARPS=8),
        "parts/32w": dict(PART_WARPS=32),
    }
    for hidden in (12288, 16384):
        for name in ("rms", "ln"):
            step, row, reference = _norm_step(name, hidden), [], None
            for label, overrides in configs.items():
                with _norm_settings(**overrides):
                    ms, outs, err = timed_and_checked(step, reference)
                reference = reference or outs
                row.append(_cell(label, ms, err))
            print(f"{name} 16384x{hidden}: " + " | ".join(row), flush=True)


def _ce_steps(n, v):
    """(timed step, fresh step): cross-entropy fwd+bwd on [n, v] bf16 logits. The kernel writes the
    gradient over its input, so the timed step reuses one buffer and the checked one clones."""
    logits = torch.randn(n, v, device="cuda", dtype=torch.bfloat16)
    target = torch.randint(0, v, (n,), device="cuda")
    timed = logits.clone().requires_grad_()

    def step(x=timed):
        loss = liger_cross_entropy(x, target)
        return (loss, *torch.autograd.grad(loss, [x]))

    return step, lambda: step(logits.clone().requires_grad_())


def cross_entropy():
    configs = [None, (8192, 32), (4096, 16), (4096, 32), (16384, 32), (2048, 8)]
    default = ce.ce_settings
    for n, v in ((8192, 128256), (2048, 128256), (8192, 32000), (8192, 256000)):
        (step, fresh), row, reference = _ce_steps(n, v), [], None
        floor_ms = 3 * n * v * 2 / 3.0e9  # three passes over the logits at ~3 TB/s
        for cfg in configs:
            ce.ce_settings = default if cfg is None else (lambda n_cols, cfg=cfg: cfg)
            ms, outs, err = timed_and_checked(step, reference, fresh)
            reference = reference or outs
            row.append(_cell("default" if cfg is None else f"{cfg[0]}/{cfg[1]}w", ms, err, floor_ms))
        ce.ce_settings = default
        print(f"{n}x{v}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
    {"norm-backward": norm_backward, "norm-wide": norm_wide, "cross-entropy": cross_entropy}[sys.argv[1]]()
