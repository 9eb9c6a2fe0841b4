"""``python -m liger_kernel.env_report``: the versions, the accelerator and the implementation each op
runs, as one block to paste into a bug report."""

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

PACKAGES = ("liger-kernel", "torch", "triton", "transformers", "peft", "accelerate", "trl")
OPTIONAL = ("peft", "accelerate", "trl")  # reported only when installed


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_driver() -> str:
    """The NVIDIA driver version from ``nvidia-smi`` (torch does not report it)."""
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({type(error).__name__})"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def _accelerator_lines(device: str) -> list[tuple[str, str]]:
    import torch

    lines = [("CUDA (torch build)", str(torch.version.cuda)), ("ROCm (torch build)", str(torch.version.hip))]
    if device == "cpu":
        return [*lines, ("Accelerator", "none (CPU only)")]
    module = getattr(torch, device)
    for index in range(module.device_count()):
        name = module.get_device_name(index)
        memory = module.get_device_properties(index).total_memory / 2**30
        lines.append((f"{device}:{index}", f"{name}, {memory:.0f} GiB"))
    if device == "cuda":
        from liger_kernel.utils import infer_device_arch

        lines.append(("Architecture", infer_device_arch()))
        if torch.version.hip is None:
            lines.append(("NVIDIA driver", _nvidia_driver()))
    return lines


def _impl_lines(device: str) -> list[tuple[str, str]]:
    from liger_kernel.ops.backends.registry import IMPL_REGISTRY, LIGER_KERNEL_IMPL_ENV, OPS, get_impl, select_impl
    from liger_kernel.utils import interpreting

    lines = [
        (LIGER_KERNEL_IMPL_ENV, os.environ.get(LIGER_KERNEL_IMPL_ENV, "(unset)")),
        ("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "(unset)")),
        ("Implementations", ", ".join(IMPL_REGISTRY)),
        ("Selected implementation", get_impl()),
    ]
    for op in OPS:
        info = select_impl(op, device)
        if not info.kernels:
            how = f"{info.name}: PyTorch reference"
        elif device == "cpu" and interpreting():
            how = f"{info.name}: Triton kernels in Triton's CPU interpreter"
        else:
            how = f"{info.name}: Triton kernels on {device}"
        lines.append((f"  {op}", how))
    return lines


def env_report() -> str:
    """The report as text."""
    import liger_kernel

    lines = [
        ("liger_kernel at", os.path.dirname(liger_kernel.__file__)),
        ("Python", sys.version.split()[0]),
        ("Platform", platform.platform()),
    ]
    for package in PACKAGES:
        version = _version(package)
        if version is not None or package not in OPTIONAL:
            lines.append((package, version or "not installed"))
    from liger_kernel.utils import infer_device

    device = infer_device()
    lines += _accelerator_lines(device) + _impl_lines(device)
    width = max(len(key) for key, _ in lines)
    body = "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in lines)
    return f"```\nliger_kernel environment report\n{body}\n```"


def print_env_report() -> None:
    """Print ``env_report()``."""
    print(env_report())


if __name__ == "__main__":
    print_env_report()
