"""What the BERT adapter covers and the nominal config of its per-layer classes (``modeling_per_layer.py``)."""

from __future__ import annotations

from typing import Any

from lightning_prune.export.per_layer import without_export_keys

#: model_type -> class-name prefix in transformers
BERT_FAMILIES: dict[str, str] = {"bert": "Bert", "roberta": "Roberta"}


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """BertSelfAttention derives head size = hidden_size / num_attention_heads and rejects a remainder: one nominal
    head always divides. The template sets each layer's heads and head size (config.attention_head_size) from
    layer_shapes."""
    cfg = without_export_keys(config)
    for key in ("attention_head_size", "pooler_size"):
        if key not in cfg:
            raise ValueError(f"A per-layer BERT config needs `{key}`; the adapter must pass it.")
    cfg["num_attention_heads"] = 1
    cfg["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


_REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
_SUPPORTED_KINDS = ("ForSequenceClassification", "Model")
