"""The BERT family's state-dict surgery: fold the final masks into the merged weights, slice away the pruned
units and build the compact model (a standard ``Bert*``/``Roberta*`` model when its config can express the shapes,
else the per-layer classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.block_surgery import BlockSurgery, instantiate, standard_shapes
from lightning_prune.adapters.quantization import plain_config_dict

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def build_bert_compact(
    adapter: BertAdapter, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    surgery = BlockSurgery(adapter, state, masks)
    surgery.cut_hidden(f"{adapter.prefix}embeddings.{name}.weight" for name in _EMBEDDINGS)
    layer_shapes = surgery.cut_layers()
    for path in adapter.readouts:
        surgery.readout(path)
    return surgery.assemble(layer_shapes, lambda d_new: _instantiate(adapter, d_new, layer_shapes))


_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def _instantiate(adapter: BertAdapter, d_new: int, layer_shapes: list[dict[str, Any]]) -> tuple[nn.Module, bool]:
    """The standard class when its config can express the shapes, else the per-layer class."""
    # BERT derives head size = hidden_size / num_attention_heads; the stock pooler / head dense is square
    standard_ok = standard_shapes(layer_shapes, d_new, adapter.head_dim) and (
        not adapter.readouts or adapter.pooler_size == d_new
    )
    first = layer_shapes[0]
    config = plain_config_dict(adapter.model.config)  # a dict: strict configs validate on every setattr
    config.update(hidden_size=d_new)
    standard = dict(num_attention_heads=first["num_attention_heads"], intermediate_size=first["intermediate_size"])
    pooling = adapter.backbone.pooler is not None
    per_layer = dict(attention_head_size=adapter.head_dim, pooler_size=adapter.pooler_size, add_pooling_layer=pooling)
    kwargs = {"add_pooling_layer": pooling} if adapter.kind == "Model" else {}
    return instantiate(adapter, config, standard if standard_ok else None, per_layer, layer_shapes, **kwargs)
