"""Patching: class-level and instance patches reach every norm and MLP (checked by class
identity), keep the weights, undo cleanly; flags, signatures, unknown types and the auto class."""

import importlib
import inspect
import logging
import types
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import liger_kernel.transformers as lk  # noqa: E402
from liger_kernel.transformers import (  # noqa: E402
    AutoLigerKernelForCausalLM,
    LigerFalconH1SwiGLUMLP,
    LigerGEGLUMLP,
    LigerPhi3SwiGLUMLP,
    LigerReLUSquared,
    LigerRMSNorm,
    LigerSwiGLUMLP,
    liger_rotary_pos_emb,
)
from liger_kernel.transformers import monkey_patch as mp  # noqa: E402
from liger_kernel.transformers.model.causal_lm import causal_lm_forward  # noqa: E402
from liger_kernel.transformers.model.loss_utils import liger_causal_lm_cross_entropy  # noqa: E402
from liger_kernel.transformers.model_specs import (  # noqa: E402
    FALCON_H1_SWIGLU,
    GEGLU,
    GEMMA4_GEGLU,
    MODEL_SPECS,
    MOE_SPECS,
    PHI3,
    RELU2,
    VISION_LANGUAGE_SPECS,
)
from liger_kernel.transformers.tiled_mlp import TiledForward  # noqa: E402

# The text families: the mixture-of-experts ones of issue 14 are checked in test_convergence_moe.py and
# test_api_names.py (tiny configs of their own), the vision-language ones in tests/test_convergence_vlm.py.
FAMILIES = sorted(set(MODEL_SPECS) - set(VISION_LANGUAGE_SPECS) - set(MOE_SPECS))
LIGER_MLP = {
    GEGLU: LigerGEGLUMLP,
    GEMMA4_GEGLU: LigerGEGLUMLP,
    PHI3: LigerPhi3SwiGLUMLP,
    FALCON_H1_SWIGLU: LigerFalconH1SwiGLUMLP,
    RELU2: LigerReLUSquared,  # Nemotron: the activation module of its plain MLP
}
# The config a family's causal LM is built from, where the table key names the multimodal one.
CONFIG_TYPE = {"qwen3_5": "qwen3_5_text"}
# One linear-attention (gated DeltaNet) layer and one attention layer, small.
LINEAR_ATTENTION = {
    "layer_types": ["linear_attention", "full_attention"],
    "linear_num_value_heads": 2,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
}
EXTRA_CONFIG = {
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1},
    "qwen3_moe": {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16, "mlp_only_layers": [0]},
    "qwen3_next": {
        "num_experts": 2,
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 24,
        "mlp_only_layers": [0],
        **LINEAR_ATTENTION,
    },
    "qwen3_5": LINEAR_ATTENTION,
    "falcon_h1": {"mamba_d_ssm": 16, "mamba_n_heads": 2, "mamba_d_head": 8, "mamba_d_state": 8, "mamba_chunk_size": 4},
    "gemma4_text": {"hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": 97, "global_head_dim": 8},
}


def tiny_config(model_type, **overrides):
    kwargs = dict(
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=97,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(EXTRA_CONFIG.get(model_type, {}), **overrides)
    return AutoConfig.for_model(CONFIG_TYPE.get(model_type, model_type), **kwargs)


def tiny_model(model_type, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))


def modeling(model_type):
    return importlib.import_module(MODEL_SPECS[model_type].module)


def stock_symbols(model_type):
    spec, module = MODEL_SPECS[model_type], modeling(model_type)
    names = (*spec.norms, *spec.mlps, spec.rope or "apply_rotary_pos_emb", "ACT2FN")
    causal_lm = getattr(module, spec.causal_lm)
    return {name: getattr(module, name) for name in names}, causal_lm.forward, causal_lm.__dict__.get("_loss_function")


def apply_fn(model_type):
    return mp.MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]


def revert_fn(model_type):
    return getattr(mp, f"revert_liger_kernel_to_{model_type}")


@pytest.fixture(autouse=True)
def revert_all():
    yield
    for model_type in FAMILIES:
        revert_fn(model_type)()


def count_converted(model, model_type):
    """(norms, MLPs, stock norms left, stock MLPs left) in ``model``, by class."""
    spec = MODEL_SPECS[model_type]
    stock_norms = {mp._original(modeling(model_type), n) for n in spec.norms}
    stock_mlps = {mp._original(modeling(model_type), n) for n in spec.mlps}
    if spec.mlp_kind == RELU2:
        stock_mlps = {type(mp._original(modeling(model_type), "ACT2FN")["relu2"])}
    liger_mlp = LIGER_MLP.get(spec.mlp_kind, LigerSwiGLUMLP)
    modules = list(model.modules())
    return (
        sum(isinstance(m, LigerRMSNorm) for m in modules),
        sum(isinstance(m, liger_mlp) for m in modules),
        sum(type(m) in stock_norms for m in modules),
        sum(type(m) in stock_mlps for m in modules),
    )


@pytest.mark.parametrize("model_type", FAMILIES)
def test_class_patch_builds_liger_modules_and_reverts(model_type):
    stock = tiny_model(model_type)
    n_norms, n_mlps = count_converted(stock, model_type)[2:]
    module, spec = modeling(model_type), MODEL_SPECS[model_type]
    assert n_norms >= (2 * 2 + 1 if spec.norms else 0)  # two per layer and the final one, at least
    symbols, forward, loss_fn = stock_symbols(model_type)

    apply_fn(model_type)(rope=True)
    rope = module.apply_rotary_pos_emb
    assert rope is (liger_rotary_pos_emb if spec.rope else symbols["apply_rotary_pos_emb"])
    assert getattr(module, spec.causal_lm).forward is causal_lm_forward
    patched = tiny_model(model_type)
    assert count_converted(patched, model_type) == (n_norms, n_mlps, 0, 0)
    # Hugging Face's init keys on the class name: Gemma norms must still start at zero (1 + w).
    norms = [m for m in patched.modules() if isinstance(m, LigerRMSNorm) and m.weight is not None]
    assert all(torch.all(norm.weight == (0.0 if spec.norm.offset else 1.0)) for norm in norms)

    revert_fn(model_type)()
    assert stock_symbols(model_type) == (symbols, forward, loss_fn)
    assert count_converted(tiny_model(model_type), model_type) == (0, 0, n_norms, n_mlps)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_instance_patch_converts_in_place_keeping_weights(model_type):
    model = tiny_model(model_type)
    n_norms, n_mlps = count_converted(model, model_type)[2:]
    params = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    modules = dict(model.named_modules())

    apply_fn(model_type)(model=model)
    assert count_converted(model, model_type) == (n_norms, n_mlps, 0, 0)
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(model.get_submodule(name) is m for name, m in modules.items())  # converted, not replaced
    for name, p in model.named_parameters():
        assert p is params[name][0] and p.data_ptr() == params[name][1], name

    revert_fn(model_type)(model=model)
    assert count_converted(model, model_type) == (0, 0, n_norms, n_mlps)


def test_instance_patch_output_matches_stock():
    model = tiny_model("qwen3")  # q/k norms on the head dimension too
    ids = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        mp._apply_liger_kernel_to_instance(model)
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_qwen3_5_vision_language_model_and_text_alias():
    """``qwen3_5`` (the vision-language model) and ``qwen3_5_text`` share one apply function. On the
    vision-language model the decoder's norms and MLPs (the text classes) are converted; the vision
    tower and the multimodal forward stay stock, and the output is stock's."""
    assert mp.MODEL_TYPE_TO_APPLY_LIGER_FN["qwen3_5_text"] is apply_fn("qwen3_5")
    text = tiny_config("qwen3_5").to_dict()
    vision = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32, patch_size=4)
    torch.manual_seed(0)
    model = transformers.Qwen3_5ForConditionalGeneration(
        AutoConfig.for_model("qwen3_5", text_config=text, vision_config=vision)
    )
    n_norms, n_mlps = count_converted(model, "qwen3_5")[2:]
    ids = torch.randint(3, 97, (2, 5))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        mp._apply_liger_kernel_to_instance(model)
        got = model(input_ids=ids).logits
    assert count_converted(model, "qwen3_5") == (n_norms, n_mlps, 0, 0) and n_norms >= 5 and n_mlps == 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    revert_fn("qwen3_5")(model=model)
    assert count_converted(model, "qwen3_5") == (0, 0, n_norms, n_mlps)


def test_peft_wrapped_model():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["q_proj", "up_proj"]))
    lora_modules = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    mp._apply_liger_kernel_to_instance(model)
    assert count_converted(model, "llama")[2:] == (0, 0)
    assert count_converted(model, "llama")[1] == 2
    assert lora_modules == [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    ids = torch.randint(3, 97, (1, 6))
    model.train()
    out = model(input_ids=ids, labels=ids)
    assert out.logits is None  # the fused loss ran
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_unsupported_model_type_changes_nothing(caplog):
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=97)
    model = AutoModelForCausalLM.from_config(config)
    classes = [type(m) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forward = type(model).forward
    with caplog.at_level(logging.INFO, logger=mp.__name__):
        mp._apply_liger_kernel_to_instance(model, rope=True)
        mp._apply_liger_kernel("gpt2")
    assert "gpt2" in caplog.text
    assert classes == [type(m) for m in model.modules()]
    assert type(model).forward is forward
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_conflicting_loss_flags_raise(model_type):
    symbols = stock_symbols(model_type)
    with pytest.raises(ValueError, match="cross_entropy and fused_linear_cross_entropy"):
        apply_fn(model_type)(cross_entropy=True, fused_linear_cross_entropy=True)
    assert stock_symbols(model_type) == symbols  # nothing half-applied


@pytest.mark.parametrize("model_type", FAMILIES)
def test_signatures(model_type):
    """Liger Kernel 0.8.5's parameters and defaults; the ones differing from Llama's are listed."""
    params = inspect.signature(apply_fn(model_type)).parameters
    mlp = MODEL_SPECS[model_type].mlp_flag
    expected = {"rope": True, "cross_entropy": False, "fused_linear_cross_entropy": True, "rms_norm": True, mlp: True}
    if model_type in ("gemma4_text", "glm4", "qwen3_5", "qwen3_next"):  # no RoPE kernel for their rotation
        expected["rope"] = False
    if model_type == "nemotron":
        expected = {"relu_squared": True, "cross_entropy": False, "fused_linear_cross_entropy": True, "model": None}
        assert list(params)[-1] == "kwargs" and params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    else:
        expected["model"] = None
    if MODEL_SPECS[model_type].extra_flags:  # ours, after the peer's: keyword only
        expected["tiled_mlp"] = False
        assert params["tiled_mlp"].kind is inspect.Parameter.KEYWORD_ONLY
    assert {n: p.default for n, p in params.items() if n != "kwargs"} == expected
    assert list(params)[: len(expected)] == list(expected)
    assert getattr(lk, f"apply_liger_kernel_to_{model_type}") is apply_fn(model_type)
    if model_type == "granite":  # our defaults differ from Liger 0.8.5's there: the docstring says why
        assert "fused_linear_cross_entropy=False" in apply_fn(model_type).__doc__


def test_instance_patch_filters_keyword_arguments(caplog):
    model = tiny_model("llama")
    rope = modeling("llama").apply_rotary_pos_emb
    with caplog.at_level(logging.INFO, logger=mp.__name__):
        # geglu is Gemma's switch, not Llama's; unknown is nobody's: both are dropped and logged.
        mp._apply_liger_kernel_to_instance(model, rope=False, geglu=False, unknown=1, rms_norm=False)
    assert "geglu" in caplog.text and "unknown" in caplog.text
    assert modeling("llama").apply_rotary_pos_emb is rope
    assert count_converted(model, "llama")[:3] == (0, 2, 5)  # MLPs converted, norms left stock


def test_mlp_the_kernel_cannot_reproduce_stays_stock():
    apply_fn("llama")()
    biased = tiny_model("llama", mlp_bias=True)
    gelu = tiny_model("llama", hidden_act="gelu")
    stock_mlp = mp._original(modeling("llama"), "LlamaMLP")
    for model in (biased, gelu):
        assert all(type(layer.mlp) is stock_mlp for layer in model.model.layers)


def training_step(model, ids):
    """The loss of one forward and backward on ``ids``, and every parameter's gradient by name."""
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


# One family per tileable MLP kind (SwiGLU, GeGLU, Gemma 4's, HunYuan's constructor).
TILED_FAMILIES = ("llama", "gemma3_text", "gemma4_text", "hunyuan_v1_dense")


@pytest.mark.parametrize("model_type", TILED_FAMILIES)
@pytest.mark.parametrize("path", ["class", "instance"])
def test_tiled_mlp_flag_recomputes_the_mlp_and_matches_stock(model_type, path):
    """``tiled_mlp=True``: every MLP is the family's Liger MLP in token shards (class patch and
    instance patch), the step's loss and gradients are stock's, and a revert restores stock."""
    ids = torch.randint(3, 97, (2, 7))
    stock = tiny_model(model_type)
    n_mlps = count_converted(stock, model_type)[3]
    expected = training_step(stock, ids)
    if path == "class":
        apply_fn(model_type)(tiled_mlp=True)
        model = tiny_model(model_type)
    else:
        model = tiny_model(model_type)
        apply_fn(model_type)(model=model, tiled_mlp=True)
    tiled = [m for m in model.modules() if isinstance(m, TiledForward)]
    assert len(tiled) == n_mlps > 0 and count_converted(model, model_type)[1] == n_mlps
    loss, grads = training_step(model, ids)
    torch.testing.assert_close(loss, expected[0], rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected[1].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-4, atol=1e-6, msg=name)
    revert_fn(model_type)(model=model)
    assert not any(isinstance(m, TiledForward) for m in model.modules())
    assert count_converted(tiny_model(model_type), model_type)[1] == 0


def test_tiled_mlp_flag_under_peft_lora():
    """LoRA on the MLP's projections (not plain Linears): ``tiled_mlp=True`` runs the generic tiled
    Function around the MLP's own forward (the adapters run per shard, and again in the recompute);
    loss and every trainable gradient as the stock LoRA model's."""
    peft = pytest.importorskip("peft")

    def build():
        config = peft.LoraConfig(r=2, target_modules=["q_proj", "up_proj", "down_proj"], init_lora_weights=False)
        return peft.get_peft_model(tiny_model("llama").float(), config)

    ids = torch.randint(3, 97, (2, 9))
    expected = training_step(build(), ids)
    model = build()
    mp._apply_liger_kernel_to_instance(model, tiled_mlp=True)
    assert sum(isinstance(m, TiledForward) for m in model.modules()) == 2
    loss, grads = training_step(model, ids)
    torch.testing.assert_close(loss, expected[0], rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected[1].keys() and any("lora_" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_cross_entropy_flag_hooks_the_family_loss():
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (2, 7))
    expected = model(input_ids=ids, labels=ids).loss
    apply_fn("llama")(cross_entropy=True, fused_linear_cross_entropy=False)
    assert model.loss_function is liger_causal_lm_cross_entropy
    assert type(model).forward is stock_symbols("llama")[1]
    assert tiny_model("qwen2").loss_function is not liger_causal_lm_cross_entropy  # other families untouched
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, expected)
    revert_fn("llama")()
    assert "_loss_function" not in type(model).__dict__


def test_auto_model_from_config_and_pretrained(tmp_path):
    config = tiny_config("gemma")
    model = AutoLigerKernelForCausalLM.from_config(config, rms_norm=False)
    assert count_converted(model, "gemma")[:3] == (0, 2, 5)
    model.save_pretrained(tmp_path)
    revert_fn("gemma")()
    loaded = AutoLigerKernelForCausalLM.from_pretrained(tmp_path, geglu=False)
    assert count_converted(loaded, "gemma")[:2] == (5, 0)
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, model.get_parameter(name), rtol=0, atol=0)


def test_patching_names_need_transformers(monkeypatch):
    monkeypatch.setattr(lk, "TRANSFORMERS_AVAILABLE", False)
    with pytest.raises(ImportError, match="pip install transformers"):
        lk.__getattr__("apply_liger_kernel_to_llama")
    assert lk.LigerRMSNorm is LigerRMSNorm  # the modules need only torch


def patch_state(model_type):
    """The modeling module's patchable symbols and this module's record of originals."""
    return stock_symbols(model_type), dict(mp._ORIGINALS)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "x"}, TypeError, "model must be the torch.nn.Module"),
        ({"rope": "false"}, TypeError, "rope must be True or False"),
        ({"swiglu": 1}, TypeError, "swiglu must be True or False"),
        ({"cross_entropy": True, "fused_linear_cross_entropy": True}, ValueError, "cannot both be True"),
        ({"tiled_mlp": "yes"}, TypeError, "tiled_mlp must be True or False"),
        ({"tiled_mlp": True, "swiglu": False}, ValueError, "Pass swiglu=True with it, or tiled_mlp=False"),
    ],
)
def test_bad_arguments_raise_before_anything_is_patched(kwargs, error, match):
    before = patch_state("llama")
    with pytest.raises(error, match=match):
        apply_fn("llama")(**kwargs)
    assert patch_state("llama") == before


def test_unset_flags_count_as_off():
    """Integrators pass their unset options as None (Axolotl's cfg.liger_rope)."""
    rope = modeling("llama").apply_rotary_pos_emb
    apply_fn("llama")(rope=None, rms_norm=None)
    assert modeling("llama").apply_rotary_pos_emb is rope
    assert count_converted(tiny_model("llama"), "llama")[:3] == (0, 2, 5)


def test_a_step_failing_midway_undoes_the_whole_patch(monkeypatch):
    apply_fn("llama")(rope=False, swiglu=False)  # an earlier patch that a failed one must leave in place
    before = patch_state("llama")

    def broken_adapter(*args):
        raise RuntimeError("adapter failed")

    monkeypatch.setattr(mp, "_mlp_adapter", broken_adapter)  # after RoPE was swapped
    with pytest.raises(RuntimeError, match="adapter failed"):
        apply_fn("llama")(cross_entropy=True, fused_linear_cross_entropy=False)
    assert patch_state("llama") == before
    revert_fn("llama")()
    assert patch_state("llama") == (stock_symbols("llama"), {})


def test_an_instance_conversion_failing_midway_undoes_the_whole_patch(monkeypatch):
    model = tiny_model("llama")
    before = patch_state("llama")
    classes = {name: type(m) for name, m in model.named_modules()}
    attributes = {name: dict(vars(m)) for name, m in model.named_modules()}
    convert, calls = mp._convert, []

    def convert_then_fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == 4:
            raise RuntimeError("conversion failed")
        convert(*args, **kwargs)

    monkeypatch.setattr(mp, "_convert", convert_then_fail)
    with pytest.raises(RuntimeError, match="conversion failed"):
        apply_fn("llama")(model=model)
    assert patch_state("llama") == before
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert {name: dict(vars(m)) for name, m in model.named_modules()} == attributes


def test_table_entries_without_a_name(monkeypatch, caplog):
    """Tests and integrators put Mocks in MODEL_TYPE_TO_APPLY_LIGER_FN: any callable works."""
    from unittest.mock import Mock

    fn = Mock()
    monkeypatch.setitem(mp.MODEL_TYPE_TO_APPLY_LIGER_FN, "llama", fn)
    model = tiny_model("llama")
    with caplog.at_level(logging.INFO, logger=mp.__name__):
        mp._apply_liger_kernel("llama", rope=False, geglu=True)
        mp._apply_liger_kernel_to_instance(model, rms_norm=False)
    assert fn.call_args_list == [((), {"rope": False, "geglu": True}), ((), {"model": model, "rms_norm": False})]

    class Patcher:  # an instance: a signature, no __name__
        def __call__(self, rope=True, model=None):
            self.called = rope, model

    patcher = Patcher()
    monkeypatch.setitem(mp.MODEL_TYPE_TO_APPLY_LIGER_FN, "llama", patcher)
    with caplog.at_level(logging.INFO, logger=mp.__name__):
        mp._apply_liger_kernel("llama", rope=False, geglu=True)
    assert patcher.called == (False, None)
    assert "ignores ['geglu']" in caplog.text


def run_recording_warnings(model, ids):
    """Train and eval forwards, a backward and a short generation, with Python warnings raised
    as errors; returns the transformers log records at warning level."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers logs each message once per process
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.train()
            model(input_ids=ids, labels=ids).loss.backward()
            model.eval()
            with torch.no_grad():
                model(input_ids=ids, labels=ids, use_cache=True)
                model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        hf_logger.removeHandler(handler)
    return [r.getMessage() for r in records]


@pytest.mark.parametrize("model_type", ["llama", "mixtral"])
def test_patched_forward_warns_no_more_than_stock(model_type):
    """transformers 5.2x renamed the KV cache argument to ``cache``: passing ``past_key_values``
    raised a FutureWarning on every call of the patched forward."""
    ids = torch.randint(3, 97, (2, 5))
    stock = run_recording_warnings(tiny_model(model_type), ids)
    apply_fn(model_type)(rope=False)  # RoPE on CPU tensors is the reference anyway
    assert run_recording_warnings(tiny_model(model_type), ids) == stock


# The modules the peer's code imports the installed forward from: (module, name) per family.
FORWARD_MODULES = {
    **{
        f: (f, "lce_forward")
        for f in FAMILIES
        if f not in ("gemma3_text", "gemma4_text", "granite", "hunyuan_v1_dense")
    },
    "gemma3_text": ("gemma3", "causal_forward"),
    "gemma4_text": ("gemma4", "causal_forward"),
    "hunyuan_v1_dense": ("hunyuan_v1", "lce_forward"),
}


@pytest.mark.parametrize("model_type", sorted(FORWARD_MODULES))
def test_per_family_forward_is_the_installed_forward(model_type):
    module, name = FORWARD_MODULES[model_type]
    forward = getattr(importlib.import_module(f"liger_kernel.transformers.model.{module}"), name)
    assert forward is causal_lm_forward
    apply_fn(model_type)()
    assert type(tiny_model(model_type)).forward is forward


def test_peer_forward_arguments_reach_the_decoder():
    """output_attentions, output_hidden_states, return_dict and cache_position as the stock forward takes them."""
    ids = torch.randint(3, 97, (2, 5))
    model = tiny_model("llama", attn_implementation="eager").eval()
    options = dict(output_attentions=True, output_hidden_states=True, cache_position=torch.arange(5))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids, **options)
        expected_tuple = model(ids, return_dict=False)
        apply_fn("llama")(model=model)
        got = model(input_ids=ids, labels=ids, **options)
        got_tuple = model(ids, return_dict=False)
    assert len(got.attentions) == len(got.hidden_states) - 1 == 2
    for name in ("loss", "logits", "attentions", "hidden_states"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-5)
    assert isinstance(got_tuple, tuple)
    torch.testing.assert_close(got_tuple[0], expected_tuple[0], rtol=1e-5, atol=1e-5)


def test_loss_utils_names():
    from liger_kernel.transformers import CrossEntropyOutput
    from liger_kernel.transformers.model import causal_lm, llama, output_classes, smollm3
    from liger_kernel.transformers.model.loss_utils import (
        fixed_fused_linear_cross_entropy,
        unpack_cross_entropy_result,
    )

    assert output_classes.LigerCausalLMOutputWithPast is causal_lm.LigerCausalLMOutputWithPast
    assert output_classes.LigerMoeCausalLMOutputWithPast is causal_lm.LigerMoeCausalLMOutputWithPast
    assert llama.lce_maybe_trainable_lm_head is smollm3.lce_maybe_trainable_lm_head
    from liger_kernel.transformers.trainer_integration import _apply_liger_kernel

    assert _apply_liger_kernel is mp._apply_liger_kernel

    torch.manual_seed(0)
    x, w = torch.randn(9, 16, dtype=torch.float64), torch.randn(33, 16, dtype=torch.float64)
    target = torch.tensor([1, 5, -100, 7, 0, 32, -100, 3, 3])
    logits = x @ w.T
    mean = torch.nn.functional.cross_entropy(logits, target)
    total = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    torch.testing.assert_close(fixed_fused_linear_cross_entropy(x, w, target), mean)
    torch.testing.assert_close(fixed_fused_linear_cross_entropy(x, w, target, num_items_in_batch=4), total / 4)
    result = fixed_fused_linear_cross_entropy(x, w, target, return_token_accuracy=True, unknown_option=1)
    loss, z_loss, accuracy, predicted = unpack_cross_entropy_result(result)
    assert isinstance(result, CrossEntropyOutput) and z_loss is None and predicted is None
    torch.testing.assert_close(loss, mean)
    valid = target != -100
    torch.testing.assert_close(accuracy, (logits.argmax(-1) == target)[valid].double().mean().to(accuracy.dtype))
    assert unpack_cross_entropy_result(mean) == (mean, None, None, None)


def test_lce_maybe_trainable_lm_head_is_the_model_loss():
    from liger_kernel.transformers.model.llama import lce_maybe_trainable_lm_head

    model = tiny_model("llama").train()
    apply_fn("llama")(model=model)
    ids = torch.randint(3, 97, (2, 6))
    expected = model(input_ids=ids, labels=ids).loss
    hidden = model.model(input_ids=ids).last_hidden_state
    got = lce_maybe_trainable_lm_head(model, hidden, hidden.shape[-1], ids, None, num_items_in_batch=None)
    torch.testing.assert_close(got, expected)


def test_bf16_model_loss_is_fp32_and_not_rounded_to_bf16():
    """Stock models upcast the logits and return an fp32 loss; so does the fused loss in the patched
    forward, computed in fp32 (no bf16 rounding, which would be an error of up to 0.016 at ln V)."""
    model = tiny_model("llama").to(torch.bfloat16).train()
    apply_fn("llama")(model=model)
    ids = torch.randint(3, 97, (2, 6))
    loss = model(input_ids=ids, labels=ids).loss
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state.double().reshape(-1, 32)
    logits = hidden @ model.lm_head.weight.double().T
    expected = torch.nn.functional.cross_entropy(
        logits, torch.nn.functional.pad(ids, (0, 1), value=-100)[:, 1:].reshape(-1)
    )
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-4 * expected.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_flag_keeps_the_returned_logits(dtype):
    """With the loss on logits, the kernel's scratch is a copy: outputs.logits stay the logits
    after the forward and after the backward."""
    model = tiny_model("llama").to(dtype).train()
    ids = torch.randint(3, 97, (2, 7))
    expected = model(input_ids=ids, labels=ids)
    apply_fn("llama")(rope=False, cross_entropy=True, fused_linear_cross_entropy=False)  # the loss alone
    out = model(input_ids=ids, labels=ids)
    logits = out.logits.detach().clone()
    torch.testing.assert_close(logits, expected.logits.detach(), rtol=0, atol=0)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected.loss)
    out.loss.backward()
    torch.testing.assert_close(out.logits.detach(), logits, rtol=0, atol=0)


class FakeFSDP(torch.nn.Module):
    """What FSDP's forward does around the module it wraps: gather the full weight, call
    ``_fsdp_wrapped_module``, free it again. Outside its forward the weight is an empty shard."""

    def __init__(self, module):
        super().__init__()
        self._fsdp_wrapped_module = module
        self.full_weight = module.weight.data
        module.weight.data = module.weight.data.new_empty(0)
        self.calls = 0

    @property
    def module(self):
        return self._fsdp_wrapped_module

    def forward(self, *args, **kwargs):
        self.calls += 1
        self.module.weight.data = self.full_weight
        try:
            return self._fsdp_wrapped_module(*args, **kwargs)
        finally:
            self.module.weight.data = self.full_weight.new_empty(0)


def head_loss(module, x, scale=1.0):
    return (x @ module.weight.T).square().sum() * scale


def test_fsdp_forward_redirection_through_a_wrapper():
    from liger_kernel.transformers.fsdp import _FSDPForwardRedirection

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5, bias=False)
    weight, x = head.weight.detach().clone(), torch.randn(3, 8)
    wrapper = FakeFSDP(head)
    got = _FSDPForwardRedirection()(wrapper, head_loss, wrapper.module, x, scale=2.0)
    assert wrapper.calls == 1 and head.weight.numel() == 0  # ran inside the wrapper's forward, freed after
    torch.testing.assert_close(got, head_loss(types.SimpleNamespace(weight=weight), x, 2.0))
    assert "forward" not in vars(head)  # the module's own forward is back
    torch.testing.assert_close(wrapper(x), x @ weight.T)

    def failing(module, x):
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        _FSDPForwardRedirection()(wrapper, failing, wrapper.module, x)
    assert "forward" not in vars(head)


def test_fsdp_forward_redirection_unwrapped_runs_hooks():
    from liger_kernel.transformers.fsdp import _FSDPForwardRedirection, is_fsdp_wrapped

    head = torch.nn.Linear(8, 5, bias=False)
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(len(args)))
    x = torch.randn(3, 8)
    got = _FSDPForwardRedirection()(head, head_loss, head, x)
    torch.testing.assert_close(got, head_loss(head, x))
    assert seen == [2] and "forward" not in vars(head)
    assert not is_fsdp_wrapped(head) and not is_fsdp_wrapped(FakeFSDP(torch.nn.Linear(2, 2)))


def test_lce_routes_an_fsdp_wrapped_head_through_its_forward(monkeypatch):
    """The generic forward's loss reads lm_head.weight inside the wrapper's forward."""
    import liger_kernel.transformers.model.causal_lm as causal_lm

    model = tiny_model("llama").train()
    apply_fn("llama")(model=model)
    ids = torch.randint(3, 97, (2, 6))
    expected = model(input_ids=ids, labels=ids).loss
    model.lm_head = FakeFSDP(model.lm_head)
    monkeypatch.setattr(causal_lm, "is_fsdp_wrapped", lambda module: isinstance(module, FakeFSDP))
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, expected)
    assert model.lm_head.calls == 1
