"""The clients import with our package installed. TRL imports ``liger_kernel.chunked_loss`` at the top of
its DPO, KTO, GRPO and GKD trainers whenever a ``liger_kernel`` distribution is installed, so without
those names every trainer fails to import, and with it LLaMA-Factory's ``llamafactory-cli train``
(its training entry imports TRL's trainers), whether Liger is enabled or not. Each import runs in its
client environment (scripts/setup_clients.sh)."""

import pytest
from clients import run_client

TRAINERS = {
    "trl024": "from trl import DPOTrainer, GRPOTrainer, KTOTrainer, GKDTrainer",
    "trl116": "from trl import DPOTrainer, GRPOTrainer, KTOTrainer; from trl.experimental.gkd import GKDTrainer",
}


@pytest.mark.parametrize("env", sorted(TRAINERS))
def test_trl_trainers_import(env, tmp_path):
    """TRL sees our distribution (so it takes its Liger branches) and its trainers import."""
    code = (
        f"from trl.import_utils import is_liger_kernel_available; assert is_liger_kernel_available(); {TRAINERS[env]}"
    )
    run_client(env, tmp_path, "-c", code)


def test_llamafactory_cli_imports(tmp_path):
    """``llamafactory-cli version`` and the module ``llamafactory-cli train`` runs (LLaMA-Factory 0.9.5, TRL 0.24)."""
    result = run_client("trl024", tmp_path, "-m", "llamafactory.cli", "version")
    assert "Welcome to LLaMA Factory, version 0.9.5" in result.stdout
    run_client("trl024", tmp_path, "-c", "from llamafactory.train.tuner import run_exp")
