"""``python -m liger_kernel.env_report`` runs on a CPU-only machine and says which implementation
each op runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from liger_kernel.ops.backends.registry import OPS

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_report(**env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("LIGER_KERNEL_IMPL", "TRITON_INTERPRET")}
    env.update(env_overrides, PYTHONPATH=SRC, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-m", "liger_kernel.env_report"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def field(report: str, key: str) -> str:
    (line,) = [line for line in report.splitlines() if line.strip().startswith(key + ":")]
    return line.split(":", 1)[1].strip()


def test_versions_and_machine():
    report, _ = run_report()
    assert report.startswith("```\n") and report.rstrip().endswith("```")
    for key in ("Python", "Platform", "liger-kernel", "torch", "triton", "transformers", "Accelerator"):
        assert field(report, key), key
    assert field(report, "liger_kernel at") == str(Path(SRC) / "liger_kernel")
    assert field(report, "Accelerator") == "none (CPU only)"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "torch: PyTorch reference"),
        ({"TRITON_INTERPRET": "1"}, "triton: Triton kernels in Triton's CPU interpreter"),
        ({"TRITON_INTERPRET": "1", "LIGER_KERNEL_IMPL": "torch"}, "torch: PyTorch reference"),
    ],
    ids=["cpu", "interpreter", "forced-reference"],
)
def test_each_op_says_what_runs(env, expected):
    report, _ = run_report(**env)
    for op in OPS:
        assert field(report, op) == expected, op


def test_unknown_impl_is_reported_not_fatal():
    report, stderr = run_report(LIGER_KERNEL_IMPL="cutile", TRITON_INTERPRET="1")
    assert field(report, "LIGER_KERNEL_IMPL") == "cutile"
    assert field(report, "Selected implementation") == "triton"
    assert "'cutile' names no implementation" in stderr
