"""LLaMA-Factory's ``apply_liger_kernel`` (model/model_utils/liger_kernel.py) for every model type it
maps, both ways it calls our function (the fused loss, and ``require_logits`` stages' loss on logits);
each type's patch is reverted after. Writes {model_type: "ok" | "skipped: ..." | the error} as JSON
to argv[1]."""

import importlib.util
import inspect
import json
import re
import sys
import traceback
from types import SimpleNamespace

from llamafactory.model.model_utils import liger_kernel as lf

import liger_kernel.transformers as lk
from liger_kernel.transformers import monkey_patch

source = inspect.getsource(lf.apply_liger_kernel)
mapped = re.findall(r'model_type == "(\w+)"', source) + [
    name for group in re.findall(r"model_type in \[([^\]]+)\]", source) for name in re.findall(r'"(\w+)"', group)
]
results = {}
for model_type in mapped:
    key = monkey_patch.ALIASES.get(model_type, model_type)
    if not hasattr(lk, f"apply_liger_kernel_to_{key}") and model_type != "glm":
        results[model_type] = f"skipped: liger_kernel has no apply_liger_kernel_to_{key}"
        continue
    package = monkey_patch.MODEL_SPECS["glm4" if model_type == "glm" else key].module.rsplit(".", 1)[0]
    if importlib.util.find_spec(package) is None:
        results[model_type] = "skipped: this transformers has no such model"
        continue
    try:
        for require_logits in (False, True):
            lf.apply_liger_kernel(
                SimpleNamespace(model_type=model_type), SimpleNamespace(enable_liger_kernel=True), True, require_logits
            )
            monkey_patch._revert("glm4" if model_type == "glm" else key, None)
        results[model_type] = "ok"
    except Exception:
        results[model_type] = traceback.format_exc()
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
