"""GPT-2 in transformers 5 (pre-norm decoder with fused ``c_attn`` and ``Conv1D`` projections).

Supported classes: ``GPT2LMHeadModel``, ``GPT2Model`` and ``GPT2ForSequenceClassification``. Every projection
is a ``Conv1D`` whose weight is stored transposed, ``(in, out)``; ``c_attn`` produces the queries, keys and
values concatenated, ``(..., 3 · n_embd)``. Structures and where their masks act (forward hooks only, so the
model keeps its classes and peft LoRA wrappers on ``c_attn``/``c_proj``/``c_fc`` keep working; peft wraps
``Conv1D`` with ``fan_in_fan_out=True`` and its merged delta has the ``(in, out)`` layout):

* ``heads``: the input of ``attn.c_proj`` (the concatenated heads), one unit per head. A head's unit removes
  its query, key and value columns of ``c_attn`` and its rows of ``attn.c_proj``.
* ``ffn``: the input of ``mlp.c_proj`` (the activation), one unit per channel.
* ``hidden``: the residual-stream dims shared by the whole model. The ``wte``/``wpe`` outputs and every
  residual write (``attn.c_proj`` and ``mlp.c_proj`` outputs) are multiplied by the mask, and every
  LayerNorm (``ln_1``, ``ln_2``, ``ln_f``) normalises over the **kept dims only** and multiplies its output
  by the mask (CoFi's masked LayerNorm, Xia et al. 2022, §3.1; see
  :func:`~lightning_prune.adapters.norms.masked_layer_norm`). The LM head (tied to ``wte`` by default) or the
  classification ``score`` reads the masked final state, so its input shrinks with ``hidden``.
* ``attn_block`` / ``mlp_block``: the outputs of ``attn.c_proj`` / ``mlp.c_proj`` (a whole block's write).

Exports are standard ``GPT2*`` models when ``GPT2Config`` can express them (the same heads and FFN channels
in every layer, ``n_embd / n_head`` equal to the original head size), and per-layer classes
(:mod:`.modeling_per_layer`) otherwise.

The package has the modules of every transformers family (:mod:`lightning_prune.adapters`); importing it registers
the adapter as ``"gpt2"`` and the per-layer export of every model type in :data:`GPT2_FAMILIES`.
"""

from __future__ import annotations

from lightning_prune.adapters.gpt2.adapter import GPT2Adapter
from lightning_prune.adapters.gpt2.config import _PER_LAYER_KINDS, GPT2_FAMILIES, _per_layer_config
from lightning_prune.adapters.norms import masked_layer_norm
from lightning_prune.adapters.registry import register_family

register_family("gpt2", GPT2Adapter, GPT2_FAMILIES, __file__, _PER_LAYER_KINDS, _per_layer_config)

__all__ = ["GPT2_FAMILIES", "GPT2Adapter", "masked_layer_norm"]
