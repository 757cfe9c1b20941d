"""GPT-2: see :mod:`lightning_prune.adapters.gpt2.adapter`."""

from lightning_prune.adapters.gpt2.adapter import GPT2_FAMILIES, GPT2Adapter, masked_layer_norm

__all__ = ["GPT2_FAMILIES", "GPT2Adapter", "masked_layer_norm"]
