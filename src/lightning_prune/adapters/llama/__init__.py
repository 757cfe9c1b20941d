"""The Llama family in transformers 5: Llama, Mistral, Qwen2 and Qwen3 layouts.

Structures and where their masks act (all through forward hooks, so peft LoRA wrappers keep working;
a hook on a LoRA-wrapped projection masks the merged ``(W + BA)`` path, which is what export folds):

* ``heads``: the input of ``o_proj``, one unit per **KV group** (a key/value head and the
  ``n_rep = num_attention_heads / num_key_value_heads`` query heads that read it). Removing whole
  groups keeps ``n_rep`` unchanged, so every export is a valid GQA config (for plain multi-head
  attention a group is one head).
* ``ffn``: the input of ``down_proj`` (equivalent to masking ``act(gate) · up``).
* ``hidden``: the embedding output and every residual write (``o_proj`` and ``down_proj`` outputs).
  RMSNorms then normalise over the kept dims only (CoFi/Sheared-LLaMA): hooks compute
  ``RMSNorm(c·x) / c`` with ``c = sqrt(d / Σm)``, which equals the compact model's norm (same weights,
  same eps) exactly.
* ``attn_block`` / ``mlp_block``: the outputs of ``o_proj`` / ``down_proj`` (a whole block's write).
* ``qk_dims`` / ``v_dims``: dims inside every head of a layer (ATP's K/Q mask over RoPE pairs and V mask), see
  :mod:`lightning_prune.adapters.head_dims`. Their exports always use the per-layer classes.

The package has the modules of every transformers family (:mod:`lightning_prune.adapters`) and :mod:`.layout`, the
layer table that its cost terms, hooks and surgery read; importing it registers the adapter as ``"llama"`` and the
per-layer export of every model type in :data:`LLAMA_FAMILIES`.
"""

from __future__ import annotations

from lightning_prune.adapters.llama.adapter import LlamaAdapter
from lightning_prune.adapters.llama.config import (
    LLAMA_FAMILIES,
    SUPPORTED_KINDS,
    _per_layer_config,
    layer_shape_summary,
    model_kind,
)
from lightning_prune.adapters.registry import register_family

register_family("llama", LlamaAdapter, LLAMA_FAMILIES, __file__, tuple(SUPPORTED_KINDS), _per_layer_config)

__all__ = ["LLAMA_FAMILIES", "SUPPORTED_KINDS", "LlamaAdapter", "layer_shape_summary", "model_kind"]
