"""LLaMA-Factory 0.9.5 as its users run it: ``llamafactory-cli train config.yaml`` (SFT and DPO stages, full
fine-tuning) on a tiny Llama and tokenizer saved to a temporary folder and a tiny alpaca-style dataset
with its dataset_info.json, stock and with ``enable_liger_kernel: true``: both runs must train and log
the same per-step losses and metrics (CPU, fp32, 2 steps). Runs in the trl024 client environment
(scripts/setup_clients.sh: LLaMA-Factory 0.9.5 on its pinned transformers 4.57, TRL 0.24)."""

import json

import pytest
import yaml
from clients import SCRIPTS, assert_same_logs, run_client

PROMPTS = ["what is two plus two?", "the cat sat on", "a quick brown fox", "good answers are"]
GOOD = ["four.", "the mat and the dog", "jumps over the lazy dog", "short and kind"]
BAD = ["five, and the dog ate it", "the bone", "sat on the mat", "long and rude"]
DATASETS = {
    "tiny_sft": {"file_name": "sft.json"},
    "tiny_dpo": {
        "file_name": "dpo.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    },
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The tiny model and tokenizer (saved by the client's own transformers) and the datasets."""
    root = tmp_path_factory.mktemp("llamafactory")
    run_client("trl024", root, "-c", f"from tiny import save_tiny; save_tiny({str(root / 'model')!r})")
    data = root / "data"
    data.mkdir()
    sft = [{"instruction": p, "input": "", "output": a} for p, a in zip(PROMPTS, GOOD)]
    dpo = [{"instruction": p, "input": "", "chosen": a, "rejected": b} for p, a, b in zip(PROMPTS, GOOD, BAD)]
    (data / "sft.json").write_text(json.dumps(sft))
    (data / "dpo.json").write_text(json.dumps(dpo))
    (data / "dataset_info.json").write_text(json.dumps(DATASETS))
    return root


def train(workdir, stage, liger):
    """``llamafactory-cli train`` (the console script's module); the per-step logs it saved."""
    output_dir = workdir / f"{stage}_{'liger' if liger else 'stock'}"
    config = {
        "model_name_or_path": str(workdir / "model"),
        "stage": stage,
        "do_train": True,
        "finetuning_type": "full",
        "dataset": f"tiny_{stage}",
        "dataset_dir": str(workdir / "data"),
        "template": "default",
        "cutoff_len": 64,
        "overwrite_cache": True,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "seed": 0,
        "enable_liger_kernel": liger,
        **({"pref_beta": 0.1, "pref_loss": "sigmoid"} if stage == "dpo" else {}),
    }
    config_file = workdir / f"{output_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_client("trl024", workdir, "-m", "llamafactory.cli", "train", config_file)
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_llamafactory_train_with_liger_matches_stock(workdir, stage):
    stock, liger = train(workdir, stage, liger=False), train(workdir, stage, liger=True)
    assert len(stock) == len(liger) == 2
    assert_same_logs(stock, liger)


# Mapped by LLaMA-Factory 0.9.5 but not patchable here: why, by model type (the rest must succeed).
NOT_PATCHED = {
    "gpt_oss": "liger_kernel has no apply_liger_kernel_to_gpt_oss",  # MoE families: the next issue
    "qwen3_5": "this transformers has no such model",  # the client's transformers 4.57 predates Qwen3.5
}


def test_llamafactory_apply_liger_kernel_for_every_mapped_type(tmp_path):
    """``apply_liger_kernel`` as LLaMA-Factory calls it (class level, before loading; with and without
    ``require_logits``) succeeds for every model type it maps, vision-language ones included."""
    out = tmp_path / "apply.json"
    run_client("trl024", tmp_path, SCRIPTS / "llamafactory_apply.py", out)
    results = json.loads(out.read_text())
    assert {"gemma3", "glm4v", "llava", "mllama", "paligemma", "qwen2_vl", "qwen2_5_vl"} <= set(results)
    failed = {t: r for t, r in results.items() if r != "ok" and r != f"skipped: {NOT_PATCHED.get(t)}"}
    assert not failed, failed
