"""Real clients (TRL, LLaMA-Factory) in their own environments. scripts/setup_clients.sh installs each
into .clients/<env> (pinned, --no-deps); a test runs the client in a subprocess whose PYTHONPATH is
this tree's ``src``, that folder, .clients/common and tests/client_scripts, so the test process imports
none of it and two TRL versions never meet."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import liger_kernel

CLIENTS = Path(__file__).resolve().parents[1] / ".clients"
SCRIPTS = Path(__file__).resolve().parent / "client_scripts"
# LLaMA-Factory imports torchaudio at the top of its data pipeline: see standins/torchaudio.
EXTRA_PATHS = {"trl024": [SCRIPTS / "standins"]}
NOT_COMPARED = {"epoch", "step", "learning_rate", "step_time"}


def client_env(name, tmp_path):
    """The environment for a subprocess in client environment ``name``; skips (with the reason the
    installer left) where it is not installed. Hub and caches stay offline, under ``tmp_path``."""
    folder = CLIENTS / name
    for part in (name, "common"):
        if not (CLIENTS / part / ".requirements").is_file():
            skip = CLIENTS / f"{part}.skip"
            reason = skip.read_text().strip() if skip.is_file() else "not installed"
            pytest.skip(f"client environment {part}: {reason} (scripts/setup_clients.sh installs it)")
    paths = [Path(liger_kernel.__file__).parents[1], folder, CLIENTS / "common", SCRIPTS, *EXTRA_PATHS.get(name, [])]
    # The kernels' own tests run them in Triton's interpreter; here, on CPU, the ops run their
    # PyTorch references (on a GPU, the kernels), so a trainer run takes seconds, not minutes.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(map(str, paths)),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
    }


def run_client(name, tmp_path, *args, timeout=900):
    """``python ARGS`` in client environment ``name``; fails with the output's tail if it fails."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        env=client_env(name, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed in {name}:\n{(result.stdout + result.stderr)[-6000:]}"
    return result


def run_trainers(name, mode, trainers, tmp_path):
    """``client_scripts/trl_runs.py``: {trainer: {"logs": [...]} or {"error": traceback}}."""
    out = tmp_path / f"{name}_{mode}.json"
    run_client(name, tmp_path, SCRIPTS / "trl_runs.py", mode, out, *trainers)
    return json.loads(out.read_text())


def assert_same_logs(stock, liger, skip=()):
    """Every metric both runs log, at every step: fp32 on both sides (the loss is logged to 4 decimals)."""
    for step, (expected, actual) in enumerate(zip(stock, liger), 1):
        names = sorted((set(expected) & set(actual)) - NOT_COMPARED - set(skip))
        assert "loss" in names
        differ = {
            name: (expected[name], actual[name])
            for name in names
            if not math.isclose(expected[name], actual[name], rel_tol=1e-3, abs_tol=1e-4)
        }
        assert not differ, f"step {step}, (stock, liger): {differ}"
