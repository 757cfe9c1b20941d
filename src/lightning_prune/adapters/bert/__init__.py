"""Post-norm BERT-style encoders (BERT, MiniLM, RoBERTa): see :mod:`lightning_prune.adapters.bert.adapter`."""

from lightning_prune.adapters.bert.adapter import BERT_FAMILIES, BertAdapter, masked_layer_norm

__all__ = ["BERT_FAMILIES", "BertAdapter", "masked_layer_norm"]
