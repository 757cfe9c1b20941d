"""Where the BERT family's masks act: forward hooks only, so the model keeps its classes and peft LoRA wrappers.

``hidden`` makes every LayerNorm normalise over the kept dims
(:func:`~lightning_prune.adapters.norms.masked_layer_norm`); ``heads``, ``ffn`` and the block gates act at the output
projections (:func:`~lightning_prune.adapters.hooks.install_block_hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.hooks import install_block_hooks
from lightning_prune.adapters.norms import masked_layer_norm

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def install_bert_hooks(
    adapter: BertAdapter, source: MaskSource, structures: set[str]
) -> list[tuple[str, nn.Module, RemovableHandle]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
    p = adapter.prefix
    nh, hd = adapter.num_heads, adapter.head_dim

    def add(path: str, module: nn.Module, handle: RemovableHandle) -> None:
        hooks.append((path, module, handle))

    if "hidden" in structures:

        def norm_hook(module, args, output):
            m = source.mask("hidden")
            return output if m is None else masked_layer_norm(module, args[0], m[0])

        norms = [(f"{p}embeddings.LayerNorm", adapter.backbone.embeddings.LayerNorm)]
        for l, layer in enumerate(adapter.layers):
            norms += [
                (f"{p}encoder.layer.{l}.attention.output.LayerNorm", layer.attention.output.LayerNorm),
                (f"{p}encoder.layer.{l}.output.LayerNorm", layer.output.LayerNorm),
            ]
        for path, norm in norms:
            add(path, norm, norm.register_forward_hook(norm_hook))

    for l, layer in enumerate(adapter.layers):
        base = f"{p}encoder.layer.{l}."
        hooks += install_block_hooks(
            source,
            structures,
            l,
            attn_out=(f"{base}attention.output.dense", layer.attention.output.dense),
            mlp_out=(f"{base}output.dense", layer.output.dense),
            head_units=nh,
            head_width=hd,
        )
    return hooks
