"""The per-layer modeling templates are real modules of their family folders (issue #15): they import, build the
per-layer classes from a config and run a forward; every registered model type renders from them into a
self-contained file; a third-party ``__FAMILY__``/``__MODULE__`` template given by an absolute path still renders."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

from lightning_prune.export.per_layer import (
    PerLayerFamily,
    class_names,
    per_layer_family,
    register_per_layer_family,
    render_modeling_source,
)
from lightning_prune.export.per_layer_inline import SHARED_MODULE

IDS = torch.tensor([[3, 17, 9, 5, 22, 8]])

#: family folder -> (model type the template is written for, its class-name prefix, the model types rendered from it)
TEMPLATES = {
    "llama": ("llama", "Llama", ("llama", "mistral", "qwen2", "qwen3")),
    "bert": ("bert", "Bert", ("bert", "roberta")),
    "gpt2": ("gpt2", "GPT2", ("gpt2",)),
    "phi3": ("phi3", "Phi3", ("phi3",)),
}


#: Nominal sizes of the per-layer configs built here: one head passes the family config's own checks, and the
#: ``layer_shapes`` override the counts.
NOMINAL = dict(
    vocab_size=32, hidden_size=16, head_dim=8, num_attention_heads=1, num_key_value_heads=1, intermediate_size=8
)


def template_module(folder: str):
    return importlib.import_module(f"lightning_prune.adapters.{folder}.modeling_per_layer")


@pytest.mark.parametrize("folder", list(TEMPLATES))
def test_the_template_module_defines_every_kind_of_its_family(folder):
    module = template_module(folder)
    model_type, prefix, _ = TEMPLATES[folder]
    for kind, name in class_names(model_type).items():
        assert hasattr(module, name), f"{folder}/modeling_per_layer.py lacks {name} ({kind})"
        cls = getattr(module, name)  # the head classes are made by a factory: named as written, defined here
        assert (cls.__name__, cls.__qualname__, cls.__module__) == (name, name, module.__name__)
    assert module.__dict__[f"Pruned{prefix}Config"].model_type == f"lightning_prune_{model_type}"


def test_the_llama_template_runs_per_layer_shapes():
    module = template_module("llama")
    shapes = [
        {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8},
        {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 0},  # both blocks pruned
        # pruned head dims: two of the four rotary pairs for queries and keys, six of eight value dims
        dict(num_attention_heads=2, num_key_value_heads=2, intermediate_size=4, qk_dim=4, v_dim=6, rope_pairs=[0, 2]),
    ]
    config = module.PrunedLlamaConfig(layer_shapes=shapes, num_hidden_layers=3, **NOMINAL)
    torch.manual_seed(0)
    model = module.PrunedLlamaForCausalLM(config).eval()
    layers = model.model.layers
    assert layers[0].self_attn.q_proj.out_features == 2 * 8 and layers[0].self_attn.k_proj.out_features == 8
    assert type(layers[1].self_attn).__name__ == "_EmptyAttention" and type(layers[1].mlp).__name__ == "_EmptyMLP"
    assert type(layers[2].self_attn).__name__ == "_HeadDimsLlamaAttention"
    assert layers[2].self_attn.q_proj.out_features == 2 * 4 and layers[2].self_attn.o_proj.in_features == 2 * 6
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, IDS.shape[1], 32) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "shape, match",
    [
        ({"num_attention_heads": 3, "num_key_value_heads": 2, "intermediate_size": 8}, "cannot share 2 key/value"),
        ({"num_attention_heads": 2, "num_key_value_heads": 0, "intermediate_size": 8}, "cannot share 0 key/value"),
        (dict(num_attention_heads=2, num_key_value_heads=2, intermediate_size=4, qk_dim=4, rope_pairs=[0]), "rope"),
    ],
)
def test_the_llama_template_refuses_inconsistent_layer_shapes_when_built(shape, match):
    """A saved config whose per-layer shapes cannot exist is refused when it is built (from_pretrained included)."""
    module = template_module("llama")
    with pytest.raises(ValueError, match=match):
        module.PrunedLlamaConfig(layer_shapes=[shape], num_hidden_layers=1, **NOMINAL)


def test_the_phi3_template_runs_per_layer_shapes():
    module = template_module("phi3")
    shapes = [
        {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8},
        {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 0},  # both blocks pruned
        {"num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 4},
    ]
    nominal = dict(NOMINAL, num_hidden_layers=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = module.PrunedPhi3Config(layer_shapes=shapes, **nominal)
    torch.manual_seed(0)
    model = module.PrunedPhi3ForCausalLM(config).eval()
    layers = model.model.layers
    assert layers[0].self_attn.qkv_proj.out_features == (2 + 2 * 1) * 8 and layers[0].self_attn.o_proj.in_features == 16
    assert layers[0].mlp.gate_up_proj.out_features == 2 * 8 and layers[2].mlp.down_proj.in_features == 4
    assert type(layers[1].self_attn).__name__ == "_EmptyAttention" and type(layers[1].mlp).__name__ == "_EmptyMLP"
    assert layers[2].self_attn.qkv_proj.out_features == (3 + 2 * 3) * 8
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, IDS.shape[1], 32) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="layer 0: 3 attention heads cannot share 2 key/value heads"):
        module.PrunedPhi3Config(
            layer_shapes=[{**shapes[0], "num_attention_heads": 3, "num_key_value_heads": 2}], **nominal
        )


def test_the_bert_template_runs_per_layer_shapes():
    module = template_module("bert")
    shapes = [{"num_attention_heads": 2, "intermediate_size": 8}, {"num_attention_heads": 0, "intermediate_size": 0}]
    config = module.PrunedBertConfig(
        layer_shapes=shapes,
        vocab_size=32,
        hidden_size=12,
        num_attention_heads=1,
        intermediate_size=8,
        num_hidden_layers=2,
        attention_head_size=4,
        pooler_size=10,
    )
    model = module.PrunedBertForSequenceClassification(config).eval()
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 2 * 4
    assert model.bert.pooler.dense.out_features == 10 and model.classifier.in_features == 10
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_the_gpt2_template_runs_per_layer_shapes():
    module = template_module("gpt2")
    shapes = [{"num_attention_heads": 3, "intermediate_size": 8}, {"num_attention_heads": 0, "intermediate_size": 0}]
    config = module.PrunedGPT2Config(
        layer_shapes=shapes, vocab_size=32, n_embd=12, n_head=1, n_inner=8, n_layer=2, n_positions=16
    )
    config.attention_head_size = 4
    model = module.PrunedGPT2LMHeadModel(config).eval()
    assert model.transformer.h[0].attn.c_attn.weight.shape == (12, 3 * 3 * 4)
    assert type(model.transformer.h[1].attn).__name__ == "_EmptyAttention"
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, IDS.shape[1], 32) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "folder, model_type", [(folder, t) for folder, (_, _, types) in TEMPLATES.items() for t in types]
)
def test_every_model_type_renders_a_self_contained_module_from_its_family_template(folder, model_type):
    own_type, prefix, _ = TEMPLATES[folder]
    spec = per_layer_family(model_type)
    assert Path(spec.template) == Path(template_module(folder).__file__)
    source = render_modeling_source(model_type)
    if model_type == own_type:  # the module is its own family's export file, with the shared helpers inlined
        template = Path(spec.template).read_text()
        tree = ast.parse(template)
        node = next(n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == SHARED_MODULE)
        lines = template.splitlines(keepends=True)
        before, after = "".join(lines[: node.lineno - 1]), "".join(lines[node.end_lineno :])
        assert source.startswith(f"{before}# Inlined from {SHARED_MODULE}") and source.endswith(after)
    else:  # no name of the template's family is left (Roberta contains "bert": replaced once, not twice)
        rest = source.replace(spec.class_prefix, "").replace(model_type, "")
        assert prefix not in rest and own_type not in rest
    assert not re.search(r"^\s*(from|import) lightning_prune", source, re.MULTILINE)
    compile(source, f"<{model_type}>", "exec")  # tests/test_per_layer_inline.py runs it without lightning_prune
    for name in class_names(model_type).values():
        assert re.search(rf"^(class {name}\(|{name} = )", source, re.MULTILINE)


def test_a_placeholder_template_given_by_an_absolute_path_still_renders(tmp_path):
    """Third-party families keep their ``.py.txt`` templates with ``__FAMILY__``/``__MODULE__`` placeholders."""
    original = per_layer_family("qwen2")
    text = Path(original.template).read_text()
    names = {"Llama": "__FAMILY__", "llama": "__MODULE__"}
    template = tmp_path / "modeling_qwen2.py.txt"
    template.write_text(re.sub("Llama|llama", lambda m: names[m.group(0)], text))
    expected = render_modeling_source("qwen2")
    register_per_layer_family("qwen2", PerLayerFamily("Qwen2", str(template), original.kinds, original.nominal_config))
    try:
        assert render_modeling_source("qwen2") == expected
    finally:
        register_per_layer_family("qwen2", original)
    with pytest.raises(FileNotFoundError, match="missing"):
        register_per_layer_family("qwen2", PerLayerFamily("Qwen2", str(tmp_path / "absent.py.txt"), (), dict))
    assert per_layer_family("qwen2") is original
