"""Per-layer (non-uniform) exports: a config subclass with ``layer_shapes`` and a small modeling file.

The modeling file is rendered from ``modeling_template.py.txt`` for the model's family and written into
the export directory, so the export loads with ``AutoModelFor*.from_pretrained(path,
trust_remote_code=True)`` without lightning-prune installed. Inside lightning-prune the same rendered
source is imported from memory (:func:`per_layer_module`), so :func:`~lightning_prune.load_compact`
never executes code from the export directory.
"""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

from torch import nn

from lightning_prune.adapters.llama import LLAMA_FAMILIES

MODELING_FILENAME = "modeling_lightning_prune.py"
MODEL_TYPE_PREFIX = "lightning_prune_"
_TEMPLATE = Path(__file__).with_name("modeling_template.py.txt")


def render_modeling_source(family: str) -> str:
    """The modeling file's source for ``family`` (a transformers model_type such as ``"llama"``)."""
    if family not in LLAMA_FAMILIES:
        raise ValueError(f"Per-layer export supports {sorted(LLAMA_FAMILIES)}, not {family!r}.")
    return _TEMPLATE.read_text().replace("__FAMILY__", LLAMA_FAMILIES[family]).replace("__MODULE__", family)


@functools.cache
def per_layer_module(family: str) -> types.ModuleType:
    """The rendered modeling module for ``family``, imported from memory (cached)."""
    name = f"lightning_prune._generated.modeling_{family}"
    module = types.ModuleType(name)
    module.__file__ = f"<lightning_prune {MODELING_FILENAME} for {family}>"
    exec(compile(render_modeling_source(family), module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def class_names(family: str) -> dict[str, str]:
    prefix = f"Pruned{LLAMA_FAMILIES[family]}"
    return {
        "config": f"{prefix}Config",
        "ForCausalLM": f"{prefix}ForCausalLM",
        "ForSequenceClassification": f"{prefix}ForSequenceClassification",
        "Model": f"{prefix}Model",
    }


def auto_map(family: str) -> dict[str, str]:
    names = class_names(family)
    stem = MODELING_FILENAME[:-3]
    return {
        "AutoConfig": f"{stem}.{names['config']}",
        "AutoModel": f"{stem}.{names['Model']}",
        "AutoModelForCausalLM": f"{stem}.{names['ForCausalLM']}",
        "AutoModelForSequenceClassification": f"{stem}.{names['ForSequenceClassification']}",
    }


def _kind(class_name: str) -> str:
    for kind in ("ForCausalLM", "ForSequenceClassification"):
        if class_name.endswith(kind):
            return kind
    if class_name.endswith("Model"):
        return "Model"
    raise ValueError(f"Per-layer export supports *ForCausalLM, *ForSequenceClassification and *Model, not {class_name}.")


def build_per_layer_model(family: str, base_class_name: str, config: dict[str, Any], layer_shapes: list[dict[str, int]]) -> nn.Module:
    """A per-layer model of the same kind as ``base_class_name`` with ``config`` and ``layer_shapes``."""
    module = per_layer_module(family)
    names = class_names(family)
    cfg_dict = dict(config)
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "layer_shapes"):
        cfg_dict.pop(key, None)
    # Nominal sizes: the per-layer shapes override them. One head passes every family's config checks
    # (LlamaConfig wants hidden_size % num_attention_heads == 0); head_dim is explicit in the config.
    cfg_dict["num_attention_heads"] = 1
    cfg_dict["num_key_value_heads"] = 1
    cfg_dict["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    pruned_config = getattr(module, names["config"])(layer_shapes=layer_shapes, **cfg_dict)
    kind = _kind(base_class_name)
    pruned_config.architectures = [names[kind]]
    pruned_config.auto_map = auto_map(family)
    return getattr(module, names[kind])(pruned_config)
