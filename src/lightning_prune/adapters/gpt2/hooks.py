"""Where the GPT-2 masks act: forward hooks only, so the model keeps its classes and peft LoRA wrappers.

``hidden`` masks the ``wte``/``wpe`` outputs and makes every LayerNorm normalise over the kept dims
(:func:`~lightning_prune.adapters.norms.masked_layer_norm`); ``heads``, ``ffn`` and the block gates act at the
output projections (:func:`~lightning_prune.adapters.hooks.install_block_hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.hooks import install_block_hooks
from lightning_prune.adapters.norms import masked_layer_norm

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def install_gpt2_hooks(
    adapter: GPT2Adapter, source: MaskSource, structures: set[str]
) -> list[tuple[str, nn.Module, RemovableHandle]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
    p = adapter.prefix
    if "hidden" in structures:

        def embed_hook(module, args, output):
            m = source.mask("hidden")
            return output if m is None else source.multiply(output, m[0])

        def norm_hook(module, args, output):
            m = source.mask("hidden")
            return output if m is None else masked_layer_norm(module, args[0], m[0])

        for name in ("wte", "wpe"):
            table = getattr(adapter.backbone, name)
            hooks.append((f"{p}{name}", table, table.register_forward_hook(embed_hook)))
        norms = [f"h.{l}.{n}" for l in range(adapter.num_layers) for n in ("ln_1", "ln_2")] + ["ln_f"]
        for name in norms:
            norm = adapter.backbone.get_submodule(name)
            hooks.append((f"{p}{name}", norm, norm.register_forward_hook(norm_hook)))
    for l, layer in enumerate(adapter.layers):
        base = f"{p}h.{l}."
        hooks += install_block_hooks(
            source,
            structures,
            l,
            attn_out=(f"{base}attn.c_proj", layer.attn.c_proj),
            mlp_out=(f"{base}mlp.c_proj", layer.mlp.c_proj),
            head_units=adapter.num_heads,
            head_width=adapter.head_dim,
        )
    return hooks
