"""A patched model deep-copies (TRL's ``create_reference_model``, KTO's and DPO's reference when none is
given): the copy is patched too and computes what the original does. Found by TRL 0.24's KTOTrainer
with ``use_liger_kernel=True`` (tests/test_trl_trainers.py), where ``copy.deepcopy`` called the Liger
MLP class's ``__new__`` without the config it required."""

import copy

import pytest
import torch

pytest.importorskip("transformers")
from test_monkey_patch import revert_fn, tiny_model  # noqa: E402

from liger_kernel.transformers import _apply_liger_kernel_to_instance  # noqa: E402


@pytest.mark.parametrize("model_type", ["llama", "gemma"])
def test_patched_model_deepcopies(model_type):
    model = tiny_model(model_type).float()
    try:
        _apply_liger_kernel_to_instance(model=model)
        twin = copy.deepcopy(model)
        assert type(twin.model.layers[0].mlp) is type(model.model.layers[0].mlp)
        ids = torch.randint(3, 97, (2, 7))
        torch.testing.assert_close(twin(ids).logits, model(ids).logits, rtol=0, atol=0)
    finally:
        revert_fn(model_type)()
