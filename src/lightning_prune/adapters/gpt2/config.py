"""What the GPT-2 adapter covers and the nominal config of its per-layer classes (``modeling_per_layer.py``)."""

from __future__ import annotations

from typing import Any

from lightning_prune.export.per_layer import without_export_keys

#: model_type -> class-name prefix in transformers
GPT2_FAMILIES: dict[str, str] = {"gpt2": "GPT2"}


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """GPT2Attention rejects n_embd % n_head != 0: one nominal head always divides. The template sets each layer's
    heads, head_dim and split_size (config.attention_head_size) from layer_shapes."""
    cfg = without_export_keys(config)
    if "attention_head_size" not in cfg:
        raise ValueError("A per-layer GPT-2 config needs `attention_head_size`; the adapter must pass it.")
    cfg["n_head"] = 1
    cfg["n_inner"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


_SUPPORTED_CLASSES = ("GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2Model")
_PER_LAYER_KINDS = ("LMHeadModel", "ForSequenceClassification", "Model")  # the per-layer classes of the export
