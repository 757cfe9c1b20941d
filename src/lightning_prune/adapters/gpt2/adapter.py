"""The GPT-2 adapter class: reads the model's config and layout and checks that it can prune it.

What it computes is in the modules beside it: the cost terms (:mod:`.cost_terms`), the mask hooks (:mod:`.hooks`)
and the state-dict surgery of the export (:mod:`.surgery`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource, ModelAdapter, base_layer, block_structures
from lightning_prune.adapters.gpt2.config import _PROJECTIONS, _SUPPORTED_CLASSES, GPT2_FAMILIES
from lightning_prune.adapters.gpt2.cost_terms import gpt2_cost_terms
from lightning_prune.adapters.gpt2.hooks import install_gpt2_hooks
from lightning_prune.adapters.gpt2.surgery import build_gpt2_compact
from lightning_prune.cost import CostTerm
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.structures import StructureSpec


class GPT2Adapter(ModelAdapter):
    """Adapter for ``GPT2LMHeadModel``, ``GPT2Model`` and ``GPT2ForSequenceClassification``.

    Args:
        model: the Hugging Face model (with any peft LoRA layers already injected).

    Raises:
        UnsupportedModelError: another GPT-2 head class (``GPT2DoubleHeadsModel``, ...), cross-attention,
            or projections that are not ``Conv1D`` (a quantized model).
    """

    model_types = tuple(GPT2_FAMILIES)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in GPT2_FAMILIES

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from transformers.pytorch_utils import Conv1D

        config = model.config
        cls_name = type(model).__name__
        if cls_name not in _SUPPORTED_CLASSES:
            raise UnsupportedModelError(
                f"The GPT-2 adapter supports {', '.join(_SUPPORTED_CLASSES)}, not {cls_name}. Prune the backbone "
                "(model.transformer) or a GPT2LMHeadModel and put your head on the export."
            )
        if getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError(
                "The GPT-2 adapter does not support cross-attention (add_cross_attention=True)."
            )
        self.family = config.model_type
        self.backbone = model.base_model  # GPT2Model (the model itself when given one)
        self.prefix = "" if self.backbone is model else f"{model.base_model_prefix}."
        self.layers = self.backbone.h
        self.num_layers = len(self.layers)
        self.hidden_size = config.n_embd
        self.num_heads = config.n_head
        if self.hidden_size % self.num_heads:
            raise UnsupportedModelError(f"n_embd={self.hidden_size} is not a multiple of n_head={self.num_heads}.")
        self.head_dim = self.hidden_size // self.num_heads
        self.intermediate_size = base_layer(self.layers[0].mlp.c_fc).weight.shape[1]
        self.vocab_size = config.vocab_size
        for path in _PROJECTIONS:
            if not isinstance(base_layer(self.layers[0].get_submodule(path)), Conv1D):
                raise UnsupportedModelError(
                    f"Expected `{path}` to be a transformers Conv1D in GPT2Block (is the model quantized?). "
                    "Pruning a quantized base is not supported: prune in bf16/fp32, then quantize the export."
                )
        self.head_name = next((n for n in ("lm_head", "score") if hasattr(model, n)), None)
        self.head = getattr(model, self.head_name) if self.head_name else None
        self.tied = self.head is not None and base_layer(self.head).weight is base_layer(self.backbone.wte).weight
        self._hidden_keep: torch.Tensor | None = None  # kept hidden dims of the last build_compact

    # -- structures and costs ----------------------------------------------------------------------
    def structures(self) -> dict[str, StructureSpec]:
        return block_structures(self.num_layers, self.num_heads, self.intermediate_size, self.hidden_size)

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        return gpt2_cost_terms(self, flops_seq_len)

    # -- hooks -------------------------------------------------------------------------------------
    def root_module(self) -> nn.Module:
        return self.backbone

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        return install_gpt2_hooks(self, source, structures)

    # -- export ------------------------------------------------------------------------------------
    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits, or for a bare ``GPT2Model`` the last hidden state at the kept dims.

        The gated model's hidden state is read at the hidden dims kept by the last :meth:`build_compact`
        (the pruned ones are 0 there and absent from the compact model).
        """
        out = model(**inputs)
        if hasattr(out, "logits"):
            return out.logits
        hidden = out.last_hidden_state
        if self.is_gated(model) and self._hidden_keep is not None:
            hidden = hidden[..., self._hidden_keep.to(hidden.device)]
        return hidden

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return build_gpt2_compact(self, state, masks)
