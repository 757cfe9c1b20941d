"""The BERT adapter class: reads the encoder's config and layout and checks that it can prune it.

What it computes is in the modules beside it: the cost terms (:mod:`.cost_terms`), the mask hooks (:mod:`.hooks`)
and the state-dict surgery of the export (:mod:`.surgery`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource, ModelAdapter, base_layer, block_structures
from lightning_prune.adapters.bert.config import _REQUIRED_CONFIG, _SUPPORTED_KINDS, BERT_FAMILIES
from lightning_prune.adapters.bert.cost_terms import bert_cost_terms
from lightning_prune.adapters.bert.hooks import install_bert_hooks
from lightning_prune.adapters.bert.surgery import build_bert_compact
from lightning_prune.cost import CostTerm
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.structures import StructureSpec


class BertAdapter(ModelAdapter):
    """Adapter for ``Bert*`` / ``Roberta*`` ``Model`` and ``ForSequenceClassification`` (post-norm encoders).

    Args:
        model: the Hugging Face model (with any peft LoRA layers already injected).

    Raises:
        UnsupportedModelError: the model is a decoder / has cross-attention, is quantized, or is a head
            class the adapter cannot export (e.g. ``BertForMaskedLM``).
    """

    model_types = tuple(BERT_FAMILIES)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in BERT_FAMILIES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config = model.config
        missing = [k for k in _REQUIRED_CONFIG if getattr(config, k, None) is None]
        if missing:
            raise UnsupportedModelError(f"The model's config lacks {missing}; the BERT adapter needs them.")
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
        self.family = config.model_type
        self.backbone = model.base_model  # BertModel / RobertaModel (the model itself when given one)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.encoder.layer
        self.num_layers = len(self.layers)
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_heads}."
            )
        self.head_dim = self.hidden_size // self.num_heads
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        layer0 = self.layers[0]
        for path in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ):
            if not isinstance(base_layer(layer0.get_submodule(path)), nn.Linear):
                raise UnsupportedModelError(
                    f"Expected `{path}` to be an nn.Linear in {type(layer0).__name__} (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )
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
        self._hidden_keep: torch.Tensor | None = None  # kept hidden dims of the last build_compact

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        return block_structures(self.num_layers, self.num_heads, self.intermediate_size, self.hidden_size)

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        return bert_cost_terms(self, flops_seq_len)

    # -- hooks -------------------------------------------------------------------------------------
    def root_module(self) -> nn.Module:
        return self.backbone

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        return install_bert_hooks(self, source, structures)

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        attention_mask = torch.ones_like(ids)
        attention_mask[-1, seq_len - seq_len // 4 :] = 0  # some padding in the last row
        inputs = {"input_ids": ids, "attention_mask": attention_mask}
        type_vocab = getattr(self.model.config, "type_vocab_size", 0) or 0
        if type_vocab > 1:
            inputs["token_type_ids"] = torch.randint(0, type_vocab, (batch_size, seq_len), generator=generator)
        return inputs

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, or for a bare encoder the last hidden state (kept dims only) and the pooler output.

        The gated model's hidden state is read at the hidden dims kept by the last :meth:`build_compact`
        (the pruned ones are 0 there and absent from the compact model).
        """
        out = model(**inputs)
        if hasattr(out, "logits"):
            return out.logits
        hidden = out.last_hidden_state
        if self.is_gated(model) and self._hidden_keep is not None:
            hidden = hidden[..., self._hidden_keep.to(hidden.device)]
        parts = [hidden.flatten(1)]
        if getattr(out, "pooler_output", None) is not None:
            parts.append(out.pooler_output)
        return torch.cat(parts, dim=-1)

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return build_bert_compact(self, state, masks)
