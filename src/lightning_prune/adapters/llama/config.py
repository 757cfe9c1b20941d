"""What the Llama adapter covers and the configs its exports use.

The model types and head classes it prunes, the family's standard config for a uniform export (or ``None`` when the
config class rejects the shapes) and the nominal config of the per-layer classes (``modeling_per_layer.py``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_prune.export.per_layer import without_export_keys

#: model_type -> class-name prefix in transformers
LLAMA_FAMILIES: dict[str, str] = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}

_REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")

#: Head classes (class-name suffixes after the family prefix) the adapter exports, with the linear head that reads
#: the final hidden state (``None``: a bare backbone). Every one has a per-layer class in modeling_per_layer.py.
SUPPORTED_KINDS: dict[str, str | None] = {
    "ForCausalLM": "lm_head",
    "ForSequenceClassification": "score",
    "ForTokenClassification": "score",
    "ForQuestionAnswering": "qa_outputs",
    "Model": None,
}


def model_kind(model: nn.Module, prefix: str, kinds: dict[str, str | None] = SUPPORTED_KINDS) -> str | None:
    """The supported kind of ``model`` (``"ForCausalLM"`` for ``LlamaForCausalLM`` or a subclass), else ``None``."""
    for cls in type(model).__mro__:
        for kind in kinds:
            if cls.__name__ == f"{prefix}{kind}":
                return kind
    return None


def _per_layer_config(config: dict[str, Any], layer_shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Nominal sizes of the per-layer config (the per-layer shapes override them): one head passes every family's
    config checks (LlamaConfig wants hidden_size % num_attention_heads == 0); head_dim is explicit in the config."""
    cfg = without_export_keys(config)
    cfg["num_attention_heads"] = 1
    cfg["num_key_value_heads"] = 1
    cfg["intermediate_size"] = max(max(s["intermediate_size"] for s in layer_shapes), 1)
    return cfg


def _standard_config(config_class: type, values: dict[str, Any]) -> Any | None:
    """The family's own config for ``values``, or ``None`` if it rejects them (e.g. LlamaConfig insists that
    hidden_size is a multiple of num_attention_heads); the export then uses the per-layer classes."""
    try:
        return config_class.from_dict(values)
    except Exception:  # noqa: BLE001 - any validation failure means "not expressible as a standard config"
        return None


def layer_shape_summary(layer_shapes: list[dict[str, Any]]) -> str:
    """One line per layer: heads / kv heads / FFN channels (and q/k and v head dims when pruned)."""
    return "\n".join(
        f"layer {i:>3}: heads {s['num_attention_heads']:>4}  kv {s['num_key_value_heads']:>3}  "
        f"ffn {s['intermediate_size']:>6}"
        + (f"  qk_dim {s['qk_dim']:>4}  v_dim {s['v_dim']:>4}" if "qk_dim" in s else "")
        for i, s in enumerate(layer_shapes)
    )
