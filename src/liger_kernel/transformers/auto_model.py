"""``AutoLigerKernelForCausalLM``: ``AutoModelForCausalLM`` that patches the model's family first."""

from transformers import AutoConfig, AutoModelForCausalLM

from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel, _parameters


def _pop_patch_kwargs(model_type, kwargs):
    """Remove and return the keyword arguments the family's patch function takes (not ``model``)."""
    fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if fn is None:
        return {}
    names = set(_parameters(fn) or ()) - {"model"}  # a callable taking anything: leave every argument to the loader
    return {name: kwargs.pop(name) for name in list(kwargs) if name in names}


class AutoLigerKernelForCausalLM(AutoModelForCausalLM):
    """Load or build a causal LM with Liger kernels: the patch keyword arguments
    (``rope``, ``rms_norm``, ``swiglu``/``geglu``, ``cross_entropy``,
    ``fused_linear_cross_entropy``) go to the family's ``apply_liger_kernel_to_*``, the rest to
    ``AutoModelForCausalLM``. An unsupported family loads stock."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        config = kwargs.get("config")
        if config is None or isinstance(config, str):
            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "trust_remote_code") if k in kwargs}
            config = AutoConfig.from_pretrained(config or pretrained_model_name_or_path, **hub_kwargs)
        _apply_liger_kernel(config.model_type, **_pop_patch_kwargs(config.model_type, kwargs))
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        _apply_liger_kernel(config.model_type, **_pop_patch_kwargs(config.model_type, kwargs))
        return super().from_config(config, **kwargs)
