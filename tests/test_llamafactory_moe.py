"""LLaMA-Factory's own ``apply_liger_kernel`` (the mapping from ``config.model_type`` to our patch
function that ``enable_liger_kernel: true`` runs) for the mixture-of-experts families, in the trl024
client environment (scripts/setup_clients.sh: LLaMA-Factory 0.9.5, transformers 4.57): the family's
causal LM gets the generic forward and its norms become ours."""

import json

import pytest
from clients import run_client

# In the client: LLaMA-Factory's mapping, then what it patched (or why it patched nothing).
SCRIPT = """
import importlib, importlib.metadata, inspect, json, sys
from llamafactory.hparams import ModelArguments
from llamafactory.model.model_utils.liger_kernel import apply_liger_kernel
from transformers import CONFIG_MAPPING

model_type = sys.argv[1]
if f'"{model_type}"' not in inspect.getsource(apply_liger_kernel):
    version = importlib.metadata.version("llamafactory")
    print(json.dumps({"skip": f"LLaMA-Factory {version}'s apply_liger_kernel has no {model_type} branch"}))
    sys.exit()
if model_type not in CONFIG_MAPPING:
    print(json.dumps({"skip": f"the client's transformers has no {model_type}"}))
    sys.exit()
config = CONFIG_MAPPING[model_type]()
model_args = ModelArguments(model_name_or_path="unused", enable_liger_kernel=True)
apply_liger_kernel(config, model_args, is_trainable=True, require_logits=False)

from liger_kernel.transformers.model.causal_lm import causal_lm_forward
from liger_kernel.transformers.model_specs import spec_for

spec = spec_for(model_type)
modeling = importlib.import_module(spec.module)
print(json.dumps({
    "generic_forward": getattr(modeling, spec.causal_lm).forward is causal_lm_forward,
    "norms": [getattr(modeling, name).__module__ for name in spec.norms],
}))
"""


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen3_5_moe"])
def test_llamafactory_mapping_resolves(tmp_path, model_type):
    result = run_client("trl024", tmp_path, "-c", SCRIPT, model_type)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report["generic_forward"]
    assert report["norms"] and set(report["norms"]) == {"liger_kernel.transformers.monkey_patch"}
