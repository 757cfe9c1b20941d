"""Where the BERT family's masks act: forward hooks only, so the model keeps its classes and peft LoRA wrappers.

``hidden`` makes every LayerNorm normalise over the kept dims
(:func:`~lightning_prune.adapters.norms.masked_layer_norm`); ``heads``, ``ffn`` and the block gates act at the output
projections (:func:`~lightning_prune.adapters.hooks.install_block_hooks`). The embeddings' sum passes through their
LayerNorm, which applies the mask, so the embedding tables need no hook of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.hooks import Hooks, install_transformer_hooks

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def install_bert_hooks(adapter: BertAdapter, source: MaskSource, structures: set[str]) -> Hooks:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    return install_transformer_hooks(adapter, source, structures)
