"""The implementation switch: ``set_impl`` / ``LIGER_KERNEL_IMPL`` (one state, the last change wins),
the registry Axolotl reads, per-call ``impl=`` in ``liger_kernel.functional``, and an unknown name
("cutile", as Axolotl's ``liger_kernel_impl`` sets it) warning instead of failing."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from parity import DEVICE, assert_matches, randn

import liger_kernel
import liger_kernel.utils
from liger_kernel import functional as LF
from liger_kernel.ops.backends import registry
from liger_kernel.ops.backends.registry import IMPL_REGISTRY, LIGER_KERNEL_IMPL_ENV, ImplInfo, register_impl
from liger_kernel.utils import use_triton

SRC = str(Path(__file__).resolve().parents[1] / "src")
KERNELS_HERE = DEVICE != "cpu" or liger_kernel.utils.interpreting()


@pytest.fixture(autouse=True)
def restore_selection(monkeypatch):
    """Each test starts from an unset LIGER_KERNEL_IMPL and leaves the caller's value (set_impl
    writes the variable, which monkeypatch does not track)."""
    original = os.environ.pop(LIGER_KERNEL_IMPL_ENV, None)
    monkeypatch.setattr(registry, "_warned", set())
    yield
    monkeypatch.undo()
    if original is None:
        os.environ.pop(LIGER_KERNEL_IMPL_ENV, None)
    else:
        os.environ[LIGER_KERNEL_IMPL_ENV] = original


def test_default_is_triton():
    assert liger_kernel.get_impl() == "triton"
    assert use_triton(torch.empty(1, device=DEVICE)) == KERNELS_HERE
    assert liger_kernel.available_impls("rms_norm", "cuda") == ["triton", "torch"]
    assert liger_kernel.available_impls("rms_norm", torch.device("cuda", 0)) == ["triton", "torch"]
    # CPU tensors take the kernels only through Triton's interpreter (a GPU machine runs none).
    on_cpu = ["triton", "torch"] if liger_kernel.utils.interpreting() else ["torch"]
    assert liger_kernel.available_impls("rms_norm", "cpu") == on_cpu


def test_set_impl_and_env_are_one_state(monkeypatch):
    x = torch.empty(1, device=DEVICE)
    liger_kernel.set_impl("torch")
    assert os.environ[LIGER_KERNEL_IMPL_ENV] == "torch" and liger_kernel.get_impl() == "torch"
    assert not use_triton(x)
    monkeypatch.setenv(LIGER_KERNEL_IMPL_ENV, "triton")  # a later change of the variable wins
    assert liger_kernel.get_impl() == "triton" and use_triton(x) == KERNELS_HERE
    liger_kernel.set_impl("TORCH")
    assert not use_triton(x)
    monkeypatch.delenv(LIGER_KERNEL_IMPL_ENV)
    assert liger_kernel.get_impl() == "triton"
    liger_kernel.set_impl(None)
    assert os.environ[LIGER_KERNEL_IMPL_ENV] == "triton"


def test_use_triton_reads_no_environment_per_call(monkeypatch):
    """``use_triton`` runs on every op call: ``os.environ.get`` (~1.8 us here) only when the
    variable changed, not per call."""
    x = torch.empty(1, device=DEVICE)
    use_triton(x)
    lookups = []
    environ_get = os._Environ.get
    monkeypatch.setattr(os._Environ, "get", lambda self, *a: lookups.append(a) or environ_get(self, *a))
    for _ in range(100):
        use_triton(x)
    assert lookups == []
    os.environ[LIGER_KERNEL_IMPL_ENV] = "torch"  # restore_selection puts the caller's value back
    assert not use_triton(x) and not use_triton(x)
    assert len(lookups) == 1


def test_backend_names_are_the_same_switch():
    assert liger_kernel.set_backend is liger_kernel.set_impl
    assert liger_kernel.get_backend is liger_kernel.get_impl
    assert liger_kernel.available_backends is liger_kernel.available_impls


def test_set_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"Unknown implementation 'cutile': choose one of \['torch', 'triton'\]"):
        liger_kernel.set_impl("cutile")
    with pytest.raises(ValueError, match="Unknown op 'dyt'"):
        liger_kernel.available_impls("dyt")


def test_unknown_env_name_warns_once_and_runs_triton(monkeypatch):
    monkeypatch.setenv(LIGER_KERNEL_IMPL_ENV, "cutile")
    x = torch.empty(1, device=DEVICE)
    with pytest.warns(UserWarning, match="LIGER_KERNEL_IMPL='cutile' names no implementation"):
        assert use_triton(x) == KERNELS_HERE
    monkeypatch.setenv(LIGER_KERNEL_IMPL_ENV, "torch")
    assert not use_triton(x)
    monkeypatch.setenv(LIGER_KERNEL_IMPL_ENV, "cutile")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert liger_kernel.get_impl() == "triton"


def run_python(code, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k != LIGER_KERNEL_IMPL_ENV}
    env.update(env_overrides, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_before_import_unknown_name_does_not_break_import():
    """Axolotl sets LIGER_KERNEL_IMPL=cutile before liger_kernel.ops is imported."""
    done = run_python(
        "import liger_kernel.ops, liger_kernel.ops.rms_norm, liger_kernel\n"
        "print(liger_kernel.get_impl(), liger_kernel.ops.LigerRMSNormFunction.__name__)",
        LIGER_KERNEL_IMPL="cutile",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["triton", "LigerRMSNormFunction"]
    assert done.stderr.count("names no implementation") == 1


def test_env_before_import_selects_reference():
    done = run_python(
        "import torch\nfrom liger_kernel.utils import use_triton\nprint(use_triton(torch.empty(1)))",
        LIGER_KERNEL_IMPL="torch",
        TRITON_INTERPRET="1",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def loaded_kernel_impl():
    """Axolotl 0.21's ``LigerPlugin._loaded_kernel_impl``: the first registered implementation
    whose module is imported."""
    return next((name for name, info in IMPL_REGISTRY.items() if info.module_path in sys.modules), None)


def test_registry_as_axolotl_reads_it():
    import liger_kernel.ops  # noqa: F401

    assert loaded_kernel_impl() == "triton"
    assert all(isinstance(info, ImplInfo) and info.name == name for name, info in IMPL_REGISTRY.items())
    assert registry.select_impl("rms_norm", "cpu").name == ("triton" if liger_kernel.utils.interpreting() else "torch")
    assert registry.select_impl("rms_norm", "cuda").name == "triton"


def test_register_impl(monkeypatch):
    """A registered implementation is selectable; where it cannot run, ops fall back."""
    cuda_only = ImplInfo("cuda-kernels", "liger_kernel.ops", "kernels on CUDA only", True, lambda d: d == "cuda")
    monkeypatch.setitem(IMPL_REGISTRY, "cuda-kernels", cuda_only)  # removed again at teardown
    assert register_impl(cuda_only) is cuda_only
    liger_kernel.set_impl("cuda-kernels")
    assert registry.select_impl("swiglu", "cuda") is cuda_only
    assert registry.select_impl("swiglu", "cpu").name == ("triton" if liger_kernel.utils.interpreting() else "torch")
    assert "cuda-kernels" in liger_kernel.available_impls("swiglu", "cuda")
    assert "cuda-kernels" not in liger_kernel.available_impls("swiglu", "cpu")
    with pytest.raises(ValueError, match=r"names ops that do not exist: \['dyt'\]"):
        register_impl(ImplInfo("x", "liger_kernel.ops", "", True, lambda d: True, ops=("dyt",)))
    with pytest.raises(TypeError, match="`info` must be an ImplInfo"):
        register_impl("x")


# ----------------------------------------------------------------------------- liger_kernel.functional


def _targets(n, v):
    return torch.randint(0, v, (n,), device=DEVICE)


def _cos_sin(t, d):
    angle = randn(1, t, d // 2)
    angle = torch.cat([angle, angle], dim=-1)
    return angle.cos(), angle.sin()


# name -> (function, make the arguments: float tensors get gradients)
CASES = {
    "cross_entropy": (LF.cross_entropy, lambda: (randn(7, 33), _targets(7, 33))),
    "fused_linear_cross_entropy": (
        LF.fused_linear_cross_entropy,
        lambda: (randn(7, 16), randn(33, 16), _targets(7, 33)),
    ),
    "geglu": (LF.geglu, lambda: (randn(3, 5, 17), randn(3, 5, 17))),
    "swiglu": (LF.swiglu, lambda: (randn(3, 5, 17), randn(3, 5, 17))),
    "layer_norm": (LF.layer_norm, lambda: (randn(5, 24), randn(24), randn(24))),
    "rms_norm": (LF.rms_norm, lambda: (randn(5, 24), randn(24))),
    "rope": (LF.rope, lambda: (randn(1, 2, 5, 8), randn(1, 1, 5, 8), *_cos_sin(5, 8))),
}


def run_function(fn, args, **options):
    """Outputs and the gradients of every float argument, for a fixed random upstream gradient."""
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    outputs = fn(*args, **options)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    total = sum((o * torch.randn(o.shape, generator=gen, device=DEVICE, dtype=o.dtype)).sum() for o in outputs)
    total.backward()
    return [*outputs, *(a.grad for a in args if a.is_floating_point())]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_impl_per_call(name, impl, monkeypatch):
    """``impl=`` picks the path for this call only; results match the float64 reference."""
    fn, make_args = CASES[name]
    torch.manual_seed(0)
    args = make_args()
    seen = []

    def spy(device_type):
        seen.append(registry.launches_kernels(device_type))
        return seen[-1]

    monkeypatch.setattr(liger_kernel.utils, "launches_kernels", spy)
    results = run_function(fn, args, impl=impl)
    assert seen and set(seen) == {impl == "triton" and KERNELS_HERE}, seen
    assert liger_kernel.get_impl() == "triton" and registry._CALL_IMPL.get() is None
    baseline = run_function(fn, args, backend="torch")
    spec = run_function(fn, _as64(args))
    for i, (r, b, s) in enumerate(zip(results, baseline, spec)):
        if s is None:  # no gradient (RoPE's cos and sin)
            assert r is None, f"{name}[{i}]"
        else:
            assert_matches(f"{name}[{i}]", r, s, baseline=b)


def _as64(args):
    return [a.double() if a.is_floating_point() else a for a in args]


def test_functional_options_checked():
    x, w = randn(5, 24), randn(24)
    with pytest.raises(ValueError, match="`mode` must be None"):
        LF.rms_norm(x, w, mode="fast")
    with pytest.raises(ValueError, match="`impl`='torch' and `backend`='triton' disagree"):
        LF.rms_norm(x, w, impl="torch", backend="triton")
    with pytest.raises(ValueError, match="Unknown implementation 'cutile'"):
        LF.rms_norm(x, w, impl="cutile")
    assert liger_kernel.functional is LF
