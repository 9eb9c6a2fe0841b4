"""Train TRL's trainers 2 steps each on the tiny Llama, stock or with Liger, and write their logs as JSON.

    python trl_runs.py {stock,liger} OUT.json TRAINER...

Run in a client environment (tests/clients.py). ``liger`` turns on what the installed TRL offers:
``use_liger_loss`` (TRL 0.24's fused losses from ``liger_kernel.chunked_loss``) and ``use_liger_kernel``
(the model patch, and GKD's fused JSD); for ``liger_orpo`` it swaps TRL's ORPOTrainer for ours. One process per
mode, since the model patch is process-wide. A trainer that fails records its traceback instead."""

import dataclasses
import importlib
import json
import sys
import tempfile
import traceback

import torch
from datasets import Dataset
from tiny import tiny_llama, tiny_tokenizer

torch.use_deterministic_algorithms(True)
PROMPTS = ["what is two plus two?", "the cat sat on", "a quick brown fox", "good answers are"]
GOOD = ["four.", "the mat and the dog", "jumps over the lazy dog", "short and kind"]
BAD = ["two plus two is five, and the dog ate it", "the bone", "sat on the mat", "long and rude; bad answers"]


def trl_class(name, experimental_module):
    """``trl.<name>``, or ``trl.experimental.<module>.<name>`` where the installed TRL moved it there."""
    trl = importlib.import_module("trl")
    try:
        return getattr(trl, name)
    except AttributeError:
        return getattr(importlib.import_module(f"trl.experimental.{experimental_module}"), name)


def config(name, module, liger, **options):
    """The trainer's config with the options this TRL version has (TRL 1.16 dropped ``use_liger_loss``)."""
    cls = trl_class(name, module)
    fields = {field.name for field in dataclasses.fields(cls)}
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=4,  # the whole preference / SFT set: both steps see the same batch
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_liger_kernel=liger,
        use_liger_loss=liger,
        bf16=False,
        fp16=False,
    )
    return cls(**{key: value for key, value in {**common, **options}.items() if key in fields})


def saved_llama(tokenizer):
    """The tiny Llama as a path: trainers that build a reference model load it from the policy's path."""
    path = tempfile.mkdtemp()
    tiny_llama(tokenizer).save_pretrained(path)
    return path


def preference_data():
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": GOOD, "rejected": BAD})


def conversation_data():
    messages = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in zip(PROMPTS, GOOD)]
    return Dataset.from_dict({"messages": messages})


def count_a(completions, **kwargs):
    """Reward: the share of ``a`` in a completion (varies between samples, so advantages are nonzero)."""
    return [c.count("a") / (1 + len(c)) for c in completions]


def sft(tokenizer, liger):
    args = config("SFTConfig", "sft", liger, max_length=32)
    data = Dataset.from_dict({"text": [p + " " + a for p, a in zip(PROMPTS, GOOD)]})
    return trl_class("SFTTrainer", "sft")(
        model=tiny_llama(tokenizer), args=args, train_dataset=data, processing_class=tokenizer
    )


def dpo(tokenizer, liger):
    args = config("DPOConfig", "dpo", liger, max_length=32, max_prompt_length=16)
    return trl_class("DPOTrainer", "dpo")(
        model=saved_llama(tokenizer), args=args, train_dataset=preference_data(), processing_class=tokenizer
    )


def kto(tokenizer, liger):
    args = config("KTOConfig", "kto", liger, per_device_train_batch_size=8, max_length=32, max_prompt_length=16)
    data = Dataset.from_dict({"prompt": PROMPTS + PROMPTS, "completion": GOOD + BAD, "label": [True] * 4 + [False] * 4})
    return trl_class("KTOTrainer", "kto")(
        model=saved_llama(tokenizer), args=args, train_dataset=data, processing_class=tokenizer
    )


def online(name, module, tokenizer, liger):
    """GRPO and RLOO: 2 sampled completions of at most 8 tokens per prompt, KL to the reference (beta)."""
    args = config(
        f"{name}Config",
        module,
        liger,
        per_device_train_batch_size=4,
        num_generations=2,
        max_prompt_length=16,
        max_completion_length=8,
        beta=0.04,
    )
    return trl_class(f"{name}Trainer", module)(
        model=saved_llama(tokenizer),
        reward_funcs=count_a,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
    )


def gkd(tokenizer, liger):
    """Off-policy (lmbda=0): the student learns the teacher's distribution on the dataset's completions.
    One conversation, 4 times: TRL 0.24's stock loss reads the positions after the longest prompt of
    the left-padded batch, which drops completion tokens of rows with shorter prompts and longer
    completions; its Liger loss reads every completion token. Equal rows make the two the same.

    TRL 0.24 builds its ``LigerFusedLinearJSDLoss`` with the loss's defaults, ``weight_hard_loss=0.5,
    weight_soft_loss=0.5``: half the student's cross-entropy on the labels plus half the JSD, where its
    stock loss is the JSD alone; and its stock loss ignores ``temperature`` (1) where the Liger one
    divides by it. The run sets the weights to (0, 1) and the temperature to 1, TRL's stock objective,
    so the two runs compare like for like."""
    args = config("GKDConfig", "gkd", liger, max_length=32, lmbda=0.0, beta=0.5, temperature=1.0, max_new_tokens=8)
    trainer = trl_class("GKDTrainer", "gkd")(
        model=tiny_llama(tokenizer),
        teacher_model=tiny_llama(tokenizer, seed=1),
        args=args,
        train_dataset=conversation_data().select([0, 0, 0, 0]),
        processing_class=tokenizer,
    )
    if getattr(trainer, "use_liger_gkd_loss", False):
        trainer.liger_jsd_loss.weight_hard_loss, trainer.liger_jsd_loss.weight_soft_loss = 0.0, 1.0
    return trainer


def distillation(tokenizer, liger):
    args = config("DistillationConfig", "distillation", liger, max_completion_length=8, lmbda=0.0, beta=0.5)
    return trl_class("DistillationTrainer", "distillation")(
        model=tiny_llama(tokenizer),
        teacher_model=tiny_llama(tokenizer, seed=1),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS, "completion": GOOD}),
        processing_class=tokenizer,
    )


def odds_ratio(name, module, ours=False):
    """CPO / ORPO; ``ours``: in the Liger run, our LigerORPOTrainer in place of TRL's ORPOTrainer."""

    def build(tokenizer, liger):
        args = config(f"{name}Config", module, liger and not ours, max_length=32, max_prompt_length=16)
        trainer = trl_class(f"{name}Trainer", module)
        if ours and liger:
            from liger_kernel.transformers.trainer import LigerORPOTrainer as trainer
        return trainer(
            model=tiny_llama(tokenizer), args=args, train_dataset=preference_data(), processing_class=tokenizer
        )

    return build


TRAINERS = {
    "sft": sft,
    "dpo": dpo,
    "kto": kto,
    "grpo": lambda tokenizer, liger: online("GRPO", "grpo", tokenizer, liger),
    "rloo": lambda tokenizer, liger: online("RLOO", "rloo", tokenizer, liger),
    "cpo": odds_ratio("CPO", "cpo"),
    "orpo": odds_ratio("ORPO", "orpo"),
    "liger_orpo": odds_ratio("ORPO", "orpo", ours=True),
    "distillation": distillation,
    "gkd": gkd,  # last: TRL 0.24's GKD patches the model classes process-wide under use_liger_kernel
}


def train(name, liger):
    """The per-step logs, and whether the trained model carried Liger modules (the patch took)."""
    trainer = TRAINERS[name](tiny_tokenizer(), liger)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"logs": logs, "patched": any(type(m).__name__.startswith("Liger") for m in trainer.model.modules())}


def main():
    mode, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    results = {}
    for name in names:
        try:
            results[name] = train(name, mode == "liger")
        except Exception:
            results[name] = {"error": traceback.format_exc()}
        with open(out, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
