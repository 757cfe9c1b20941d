"""The Llama family (Llama, Mistral, Qwen2, Qwen3): see :mod:`lightning_prune.adapters.llama.adapter`."""

from lightning_prune.adapters.llama.adapter import (
    LLAMA_FAMILIES,
    SUPPORTED_KINDS,
    LlamaAdapter,
    layer_shape_summary,
    model_kind,
)

__all__ = ["LLAMA_FAMILIES", "SUPPORTED_KINDS", "LlamaAdapter", "layer_shape_summary", "model_kind"]
