"""The BERT adapter class: reads the encoder's config and layout and checks that it can prune it.

What it computes is in the modules beside it (:mod:`lightning_prune.adapters` lists them); what it shares with the
other LayerNorm family is in :mod:`lightning_prune.adapters.transformer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.adapters.base import base_layer, require_config
from lightning_prune.adapters.bert.config import _REQUIRED_CONFIG, _SUPPORTED_KINDS, BERT_FAMILIES
from lightning_prune.adapters.bert.cost_terms import bert_cost_terms
from lightning_prune.adapters.bert.surgery import build_bert_compact
from lightning_prune.adapters.transformer import Layout, TransformerAdapter
from lightning_prune.errors import UnsupportedModelError


class BertAdapter(TransformerAdapter):
    """Adapter for ``Bert*`` / ``Roberta*`` ``Model`` and ``ForSequenceClassification`` (post-norm encoders).

    Raises:
        UnsupportedModelError: the model is a decoder / has cross-attention, is quantized, or is a head
            class the adapter cannot export (e.g. ``BertForMaskedLM``).
    """

    model_types = tuple(BERT_FAMILIES)
    layout = Layout(
        layers="encoder.layer",
        norms=("embeddings.LayerNorm",),
        layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        attn_in=("attention.self.query", "attention.self.key", "attention.self.value"),
        attn_out="attention.output.dense",
        mlp_in="intermediate.dense",
        mlp_out="output.dense",
        scores="attention.scores",
    )

    _cost_terms_of = staticmethod(bert_cost_terms)
    _compact_of = staticmethod(build_bert_compact)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        require_config(config, _REQUIRED_CONFIG, "BERT")
        cls_name = type(model).__name__
        prefix = BERT_FAMILIES.get(getattr(config, "model_type", None), "")
        names = {cls.__name__ for cls in type(model).__mro__}  # BertModel or a subclass; not BertLMHeadModel
        self.kind = next((k for k in _SUPPORTED_KINDS if f"{prefix}{k}" in names), None)
        if self.kind is None:
            raise UnsupportedModelError(
                f"The BERT adapter supports *Model and *ForSequenceClassification, not {cls_name}. Prune the "
                "backbone (e.g. model.bert) or a sequence-classification model and put your head on the export."
            )
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError(
                "The BERT adapter supports encoders only (config.is_decoder=False, add_cross_attention=False), got "
                f"is_decoder={config.is_decoder}, add_cross_attention={config.add_cross_attention}."
            )
        self._read_layout("hidden_size", "num_attention_heads")
        self.intermediate_size = config.intermediate_size
        self._check_projections(nn.Linear, "an nn.Linear")
        # Linear layers that read the final hidden state (their input shrinks with `hidden`, their output stays).
        self.readouts: dict[str, nn.Module] = {}
        if self.backbone.pooler is not None:
            self.readouts[f"{self.prefix}pooler.dense"] = self.backbone.pooler.dense
        classifier = getattr(model, "classifier", None) if self.kind == "ForSequenceClassification" else None
        if classifier is not None and hasattr(classifier, "dense") and hasattr(classifier, "out_proj"):
            self.readouts["classifier.dense"] = classifier.dense  # RobertaClassificationHead
        elif classifier is not None and not isinstance(base_layer(classifier), nn.Linear):
            raise UnsupportedModelError(f"Unexpected classifier {type(classifier).__name__} in {cls_name}.")
        sizes = {base_layer(m).out_features for m in self.readouts.values()}
        if len(sizes) > 1:
            raise UnsupportedModelError(
                f"The pooler and the classifier read the hidden state into different sizes {sizes}."
            )
        self.pooler_size = sizes.pop() if sizes else self.hidden_size

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inputs = super().example_inputs(batch_size, seq_len, generator)
        inputs["attention_mask"][-1, seq_len - seq_len // 4 :] = 0  # some padding in the last row
        type_vocab = getattr(self.model.config, "type_vocab_size", 0) or 0
        if type_vocab > 1:
            inputs["token_type_ids"] = torch.randint(0, type_vocab, (batch_size, seq_len), generator=generator)
        return inputs

    def backbone_outputs(self, out: Any, hidden: torch.Tensor) -> torch.Tensor:
        """A bare encoder's last hidden state (kept dims only) and its pooler output."""
        parts = [hidden.flatten(1)]
        if getattr(out, "pooler_output", None) is not None:
            parts.append(out.pooler_output)
        return torch.cat(parts, dim=-1)
