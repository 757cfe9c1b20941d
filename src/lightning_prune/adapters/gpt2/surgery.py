"""The GPT-2 state-dict surgery: fold the final masks into the merged ``Conv1D`` weights (stored ``(in, out)``),
slice away the pruned units and build the compact model (a standard ``GPT2*`` model when ``GPT2Config`` can express
the shapes, else the per-layer classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.block_surgery import BlockSurgery, instantiate, standard_shapes
from lightning_prune.adapters.quantization import plain_config_dict

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def build_gpt2_compact(
    adapter: GPT2Adapter, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    surgery = BlockSurgery(adapter, state, masks, transposed=True)  # Conv1D weights are (in, out)
    surgery.cut_hidden([f"{adapter.prefix}wte.weight", f"{adapter.prefix}wpe.weight"])
    layer_shapes = surgery.cut_layers()
    if adapter.head is not None:
        surgery.readout(adapter.head_name)
    tied = f"{adapter.head_name}.weight" if adapter.tied else None
    return surgery.assemble(layer_shapes, lambda d_new: _instantiate(adapter, d_new, layer_shapes), tied)


def _instantiate(adapter: GPT2Adapter, d_new: int, layer_shapes: list[dict[str, Any]]) -> tuple[nn.Module, bool]:
    """The standard class when ``GPT2Config`` can express the shapes, else the per-layer class."""
    first = layer_shapes[0]
    config = plain_config_dict(adapter.model.config)  # a dict: strict configs validate on every setattr
    config.update(n_embd=d_new)
    # GPT2Attention derives head_dim = n_embd / n_head
    standard = dict(n_head=first["num_attention_heads"], n_inner=first["intermediate_size"])
    standard_ok = standard_shapes(layer_shapes, d_new, adapter.head_dim)
    per_layer = dict(attention_head_size=adapter.head_dim)
    return instantiate(adapter, config, standard if standard_ok else None, per_layer, layer_shapes)
