"""`transformers.Trainer(use_liger_kernel=True)`: Hugging Face's own integration finds this package,
calls `_apply_liger_kernel_to_instance(model=..., **liger_kernel_config)` when training starts, and
the patched model trains and evaluates (through the fused loss) with the losses of a stock run."""

import copy
import importlib.metadata

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.utils import is_liger_kernel_available  # noqa: E402

from liger_kernel import transformers as lkt  # noqa: E402

VOCAB, SEQ, BATCH, STEPS = 97, 24, 2, 3
ON_GPU = torch.cuda.is_available()


def tiny_llama():
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
        self.labels = self.ids.clone()
        self.labels[:, :3] = -100  # a prompt the loss ignores

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class ModuleClasses(TrainerCallback):
    """The classes of the norms and MLPs of the model being trained, seen at the first step."""

    def __init__(self):
        self.seen = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.seen is None:
            self.seen = {name: type(m) for name, m in model.named_modules() if name.endswith(("norm", "mlp"))}


class RecordingTrainer(Trainer):
    """Records every training loss unrounded (the log history rounds it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.losses.append((result[0] if return_outputs else result).item())
        return result


def run_trainer(model, tmp_path, use_liger, config=None):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        prediction_loss_only=True,
        use_liger_kernel=use_liger,
        liger_kernel_config=config,
        use_cpu=not ON_GPU,
        disable_tqdm=True,
    )
    classes = ModuleClasses()
    trainer = RecordingTrainer(
        model=model, args=args, train_dataset=TokenData(8, 1), eval_dataset=TokenData(4, 2), callbacks=[classes]
    )
    trainer.train()
    # What the eval forward returned: logits are None when the fused loss skipped them.
    eval_logits = []
    hook = trainer.model.register_forward_hook(lambda m, a, out: eval_logits.append(out.logits))
    metrics = trainer.evaluate()
    hook.remove()
    return trainer, classes.seen, metrics["eval_loss"], eval_logits


@pytest.fixture
def restore_llama():
    """Leave the llama classes stock for the other tests, whatever the instance patch touched."""
    saved = dict(vars(modeling_llama))
    forward = modeling_llama.LlamaForCausalLM.forward
    yield
    revert = getattr(lkt, "revert_liger_kernel_to_llama", None)
    if revert is not None:
        revert()
    for name, value in saved.items():
        setattr(modeling_llama, name, value)
    modeling_llama.LlamaForCausalLM.forward = forward


def test_transformers_sees_this_package():
    assert importlib.metadata.version("liger-kernel").startswith("1.0.0")
    assert is_liger_kernel_available()


def test_trainer_use_liger_kernel(tmp_path, restore_llama):
    from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP

    # Every flag the Trainer may forward, plus one this family does not take (geglu): the
    # instance patch must pass each function only what its signature accepts.
    config = {"rope": True, "swiglu": True, "geglu": True, "rms_norm": True, "fused_linear_cross_entropy": True}
    stock_model = tiny_llama()
    liger_model = copy.deepcopy(stock_model)
    initial = {name: p.detach().clone() for name, p in stock_model.named_parameters()}

    stock, stock_classes, stock_eval, stock_logits = run_trainer(stock_model, tmp_path / "stock", False)
    liger, liger_classes, liger_eval, liger_logits = run_trainer(liger_model, tmp_path / "liger", True, config)

    # Patched in place when training started: every norm and MLP of the trained model is ours.
    assert not any(issubclass(c, (LigerRMSNorm, LigerSwiGLUMLP)) for c in stock_classes.values())
    norms = [n for n in liger_classes if n.endswith("norm")]
    mlps = [n for n in liger_classes if n.endswith("mlp")]
    assert len(norms) == 2 * 2 + 1 and len(mlps) == 2
    for name in norms:
        assert issubclass(liger_classes[name], LigerRMSNorm), f"{name} is {liger_classes[name]}"
    for name in mlps:
        assert issubclass(liger_classes[name], LigerSwiGLUMLP), f"{name} is {liger_classes[name]}"

    # Same initial weights, batches and fp32 arithmetic: the same losses and weights.
    assert len(stock.losses) == len(liger.losses) == STEPS
    assert liger.losses[0] == pytest.approx(stock.losses[0], rel=1e-5)
    assert liger.losses == pytest.approx(stock.losses, rel=1e-4)
    # AdamW's step is about lr * sign(grad): an element whose gradient is a near-total cancellation
    # can take a visibly different step from rounding alone. So compare each tensor's whole update
    # in norm: rounding moves it by ~1e-5 of its size, a wrong gradient by O(1).
    for (name, p), q in zip(stock.model.named_parameters(), liger.model.parameters()):
        update = (p - initial[name].to(p.device)).norm()
        assert update > 0, f"{name} did not train"
        assert (q - p).norm() <= 1e-3 * update, f"{name}: {(q - p).norm():.2e} vs update {update:.2e}"

    # Evaluation with prediction_loss_only: the stock run computed logits, the patched one took the
    # fused path (no logits) and got the same loss.
    assert stock_logits and all(x is not None for x in stock_logits)
    assert liger_logits and all(x is None for x in liger_logits)
    assert liger_eval == pytest.approx(stock_eval, rel=1e-5)
