"""Where the GPT-2 masks act: forward hooks only, so the model keeps its classes and peft LoRA wrappers.

``hidden`` masks the ``wte``/``wpe`` outputs and makes every LayerNorm normalise over the kept dims
(:func:`~lightning_prune.adapters.norms.masked_layer_norm`); ``heads``, ``ffn`` and the block gates act at the
output projections (:func:`~lightning_prune.adapters.hooks.install_block_hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.hooks import Hooks, install_transformer_hooks

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def install_gpt2_hooks(adapter: GPT2Adapter, source: MaskSource, structures: set[str]) -> Hooks:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    hooks: Hooks = []
    if "hidden" in structures:

        def embed_hook(module, args, output):
            m = source.mask("hidden")
            return output if m is None else source.multiply(output, m[0])

        for name in ("wte", "wpe"):
            table = getattr(adapter.backbone, name)
            hooks.append((f"{adapter.prefix}{name}", table, table.register_forward_hook(embed_hook)))
    return hooks + install_transformer_hooks(adapter, source, structures)
