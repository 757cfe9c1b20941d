"""The GPT-2 adapter class: reads the model's config and layout and checks that it can prune it.

What it computes is in the modules beside it (:mod:`lightning_prune.adapters` lists them); what it shares with the
other LayerNorm family is in :mod:`lightning_prune.adapters.transformer`.
"""

from __future__ import annotations

from torch import nn

from lightning_prune.adapters.base import base_layer
from lightning_prune.adapters.gpt2.config import _SUPPORTED_CLASSES, GPT2_FAMILIES
from lightning_prune.adapters.gpt2.cost_terms import gpt2_cost_terms
from lightning_prune.adapters.gpt2.surgery import build_gpt2_compact
from lightning_prune.adapters.transformer import Layout, TransformerAdapter
from lightning_prune.errors import UnsupportedModelError


class GPT2Adapter(TransformerAdapter):
    """Adapter for ``GPT2LMHeadModel``, ``GPT2Model`` and ``GPT2ForSequenceClassification``.

    Raises:
        UnsupportedModelError: another GPT-2 head class (``GPT2DoubleHeadsModel``, ...), cross-attention,
            or projections that are not ``Conv1D`` (a quantized model).
    """

    model_types = tuple(GPT2_FAMILIES)
    layout = Layout(
        layers="h",
        norms=("ln_f",),
        layer_norms=("ln_1", "ln_2"),
        attn_in=("attn.c_attn",),  # every head's query, key and value columns
        attn_out="attn.c_proj",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        scores="attn.scores",
        fused=3,
        embeddings=("wte", "wpe"),
    )

    _cost_terms_of = staticmethod(gpt2_cost_terms)
    _compact_of = staticmethod(build_gpt2_compact)

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
        self._read_layout("n_embd", "n_head")
        self.intermediate_size = base_layer(self.layers[0].mlp.c_fc).weight.shape[1]
        self._check_projections(Conv1D, "a transformers Conv1D")
        self.head_name = next((n for n in ("lm_head", "score") if hasattr(model, n)), None)
        self.head = getattr(model, self.head_name) if self.head_name else None
        self.tied = self.head is not None and base_layer(self.head).weight is base_layer(self.backbone.wte).weight
