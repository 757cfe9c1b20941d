"""Post-norm BERT-style encoders in transformers 5: BERT, MiniLM (a BERT) and RoBERTa.

Supported classes: ``BertModel`` / ``BertForSequenceClassification`` and ``RobertaModel`` /
``RobertaForSequenceClassification``. Structures and where their masks act (forward hooks only, so the
model keeps its classes and peft LoRA wrappers on ``query``/``key``/``value``/``dense`` keep working; a
hook on a LoRA-wrapped projection masks the merged ``(W + BA)`` path, which is what export folds):

* ``heads``: the input of ``attention.output.dense`` (the context), one unit per head.
* ``ffn``: the input of ``output.dense`` (the intermediate activation), one unit per channel.
* ``hidden``: the embedding dims shared by the whole model. Every residual write (``attention.output.dense``
  and ``output.dense`` outputs) is multiplied by the mask, and every LayerNorm (the embedding LayerNorm and
  the two post-norm LayerNorms of each layer) normalises over the **kept dims only** and multiplies its
  output by the mask (CoFi's ``CoFiLayerNorm``, Xia et al. 2022, "Structured Pruning Learns Compact and
  Accurate Models", §3.1). With a binary mask this is exactly the compact model's ``nn.LayerNorm`` on the
  sliced dims (same weights, same eps). The pooler (or RoBERTa's classification head) reads the masked
  final hidden state, so its input shrinks with ``hidden``; its output size stays.
* ``attn_block`` / ``mlp_block``: the outputs of ``attention.output.dense`` / ``output.dense`` (a whole
  block's write). The post-norm LayerNorm after a removed block stays: the layer computes ``LN(x)``.

Exports are standard ``Bert*``/``Roberta*`` models when the standard config can express them (uniform
FFN pruning; ``hidden_size / num_attention_heads`` must stay the original head size and the pooler must
stay square), and per-layer classes (:mod:`.modeling_per_layer`) otherwise.

The package has the modules of every transformers family (:mod:`lightning_prune.adapters`); importing it registers
the adapter as ``"bert"`` and the per-layer export of every model type in :data:`BERT_FAMILIES`.
"""

from __future__ import annotations

from lightning_prune.adapters.bert.adapter import BertAdapter
from lightning_prune.adapters.bert.config import _SUPPORTED_KINDS, BERT_FAMILIES, _per_layer_config
from lightning_prune.adapters.norms import masked_layer_norm
from lightning_prune.adapters.registry import register_family

register_family("bert", BertAdapter, BERT_FAMILIES, __file__, _SUPPORTED_KINDS, _per_layer_config)

__all__ = ["BERT_FAMILIES", "BertAdapter", "masked_layer_norm"]
