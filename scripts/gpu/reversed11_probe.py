"""Where a family's float64 loss moves when the batch rows are reversed (tests/test_convergence_vlm.py
``test_reversed_rows_are_the_same_batch`` failed for glm4v_moe on the H200 only). Builds the test's
nudged float64 model, runs the batch and its reversed rows, prints both losses, then the first
modules (in call order) whose output, rows put back, differs by more than 1e-13 of its scale:

    PYTHONPATH=src python scripts/gpu/reversed11_probe.py glm4v_moe glm4v
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import conftest  # noqa: E402,F401 (the interpreter on CPU)
import torch  # noqa: E402
from test_convergence import float64_copy, reversed_rows  # noqa: E402
from vlm_models import build, make_inputs  # noqa: E402


def first_tensor(out):
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in map(first_tensor, out) if t is not None), None)
    return getattr(out, "last_hidden_state", None) if hasattr(out, "last_hidden_state") else None


def rows_back(t, n):
    if t.dim() == 0 or t.shape[0] % n:
        return None
    return t.unflatten(0, (n, -1)).flip(0).flatten(0, 1)


def report(model_type):
    torch.manual_seed(0)
    model = float64_copy(build(model_type, torch.float32), sdpa=False).eval()
    outputs = [[], []]
    run = [0]

    def hook(name):
        def record(module, args, out):
            t = first_tensor(out)
            if t is not None and t.is_floating_point():
                outputs[run[0]].append((name, t.detach().clone()))

        return record

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
        for name, module in model.named_modules():
            module.register_forward_hook(hook(name))
        inputs = lambda seed, dtype: make_inputs(model_type, seed, dtype)  # noqa: E731
        n = len(inputs(0, torch.float64)["input_ids"])
        losses = []
        for i, batch in enumerate((inputs, reversed_rows(inputs))):
            run[0] = i
            losses.append(model(**batch(0, torch.float64)).loss.item())
    relative = abs(losses[0] - losses[1]) / abs(losses[0])
    print(f"== {model_type}: losses {losses[0]!r} {losses[1]!r}, relative {relative:.2e}")
    shown = 0
    for (name, a), (name_b, b) in zip(*outputs):
        back = rows_back(b, n) if a.shape == b.shape else None
        if name != name_b or back is None or ".experts." in name:  # experts see their own token subsets
            continue
        diff = (a - back).abs().max().item() / max(a.abs().max().item(), 1e-300)
        if diff > 1e-13:
            print(f"  {name} {tuple(a.shape)} {a.dtype}: {diff:.2e}")
            shown += 1
            if shown == 12:
                break


if __name__ == "__main__":
    for model_type in sys.argv[1:] or ["glm4v_moe"]:
        report(model_type)
