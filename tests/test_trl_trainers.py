"""TRL's trainers with Liger on, against the same trainer without, on a tiny Llama (2 steps, CPU, fp32).

TRL 0.24 (LLaMA-Factory 0.9.5's pin): DPO, KTO and GRPO with ``use_liger_loss=True`` (the fused losses
of ``liger_kernel.chunked_loss``), GKD with ``use_liger_kernel=True`` (the fused JSD), and our
``LigerORPOTrainer`` against TRL's ``ORPOTrainer``. TRL 1.16: every trainer with ``use_liger_kernel=True``
(the model patch; 1.16 dropped ``use_liger_loss``), and ``LigerORPOTrainer`` on its experimental ORPO.
Each logged metric of each step must agree; the runs happen in the client environments of
scripts/setup_clients.sh (tests/clients.py)."""

import importlib
import math

import pytest
from clients import assert_same_logs, run_client, run_trainers

TRL024 = ["dpo", "kto", "grpo", "liger_orpo", "gkd"]
TRL116 = ["sft", "dpo", "kto", "grpo", "rloo", "cpo", "orpo", "liger_orpo", "distillation", "gkd"]


def both_modes(env, trainers, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(env)
    return {mode: run_trainers(env, mode, trainers, tmp_path) for mode in ("stock", "liger")}


@pytest.fixture(scope="module")
def trl024(tmp_path_factory):
    return both_modes("trl024", TRL024, tmp_path_factory)


@pytest.fixture(scope="module")
def trl116(tmp_path_factory):
    return both_modes("trl116", TRL116, tmp_path_factory)


def step_logs(runs, trainer):
    """The per-step logs of both runs, failing with a run's traceback; the Liger run's model was
    patched (``use_liger_kernel``), the stock one's not (LigerORPOTrainer sets no flag: its model is
    patched only when an earlier trainer of that process patched the Llama classes)."""
    logs = {}
    for mode in ("stock", "liger"):
        run = runs[mode][trainer]
        assert "error" not in run, f"{trainer}, {mode}:\n{run['error']}"
        if trainer != "liger_orpo":
            assert run["patched"] == (mode == "liger"), (trainer, mode, run["patched"])
        logs[mode] = run["logs"]
        assert len(logs[mode]) == 2 and all(math.isfinite(entry["loss"]) for entry in logs[mode]), logs[mode]
    return logs["stock"], logs["liger"]


# TRL 0.24's KTO logs the sum of the logits over every position of the padded batch (prompt and padding
# included) on its stock path, and over the completion tokens the loss reads on its Liger path.
DEFINED_APART = {"kto": {"logits/chosen", "logits/rejected"}}


@pytest.mark.parametrize("trainer", ["dpo", "kto", "grpo", "gkd"])
def test_trl024_liger_loss_matches_stock(trl024, trainer):
    assert_same_logs(*step_logs(trl024, trainer), skip=DEFINED_APART.get(trainer, ()))


@pytest.mark.parametrize("env", ["trl024", "trl116"])
def test_liger_orpo_trainer_matches_orpo_trainer(env, request):
    """LigerORPOTrainer against TRL's ORPOTrainer (``trl.trainer`` in 0.24, ``trl.experimental.orpo`` in
    1.16): the same batch twice, so the loss must also go down. ``logits/*`` differ by definition (see
    LigerORPOTrainer)."""
    stock, liger = step_logs(request.getfixturevalue(env), "liger_orpo")
    assert_same_logs(stock, liger, skip={"logits/chosen", "logits/rejected"})
    assert liger[1]["loss"] < liger[0]["loss"]


@pytest.mark.parametrize("trainer", [name for name in TRL116 if name != "liger_orpo"])
def test_trl116_use_liger_kernel_matches_stock(trl116, trainer):
    assert_same_logs(*step_logs(trl116, trainer))


def test_importing_liger_kernel_transformers_imports_no_trl(tmp_path):
    code = "import sys, liger_kernel.transformers; assert 'trl' not in sys.modules, 'trl imported'"
    run_client("trl024", tmp_path, "-c", code)


def test_trainer_without_trl_names_trl():
    """Where TRL is absent (the main environment), importing the trainer says to install it."""
    if importlib.util.find_spec("trl") is not None:
        pytest.skip("TRL is installed in the main environment")
    with pytest.raises(ImportError, match="TRL is not installed: pip install trl"):
        importlib.import_module("liger_kernel.transformers.trainer")
