"""Mask hooks shared by the transformer adapters.

Every transformer block has two output projections whose *inputs* carry the per-unit structure (the
concatenated heads, the FFN channels) and whose *outputs* are the block's write to the residual stream
(scaled by a whole-block gate and by the hidden-dim mask). :func:`install_block_hooks` puts the four kinds
of masks there, for any family; adapters only say where the projections are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource, base_layer
from lightning_prune.adapters.norms import masked_layer_norm

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.transformer import TransformerAdapter

Hooks = list[tuple[str, nn.Module, RemovableHandle]]


def layer_sites(layer: nn.Module, base: str, paths: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """``(module path, module)`` of each of ``paths`` in ``layer``, the layer's path being ``base`` (with its dot):
    the sites a family's layout names, as the hook installers take them."""
    return [(f"{base}{path}", layer.get_submodule(path)) for path in paths]


def install_block_hooks(
    source: MaskSource,
    structures: set[str],
    layer: int,
    attn_out: tuple[str, nn.Module],
    mlp_out: tuple[str, nn.Module],
    head_units: int,
    head_width: int,
    hidden_on_writes: bool = True,
) -> Hooks:
    """Hooks of one block.

    Args:
        source: where masks come from (the pruner).
        structures: the gated structures.
        layer: the block's row in per-layer structures and its unit in ``*_block`` structures.
        attn_out: ``(path, module)`` of the attention output projection (input: concatenated heads).
        mlp_out: ``(path, module)`` of the MLP output projection (input: FFN channels).
        head_units: units of the ``heads`` structure (heads, or KV groups for GQA).
        head_width: input dims of ``attn_out`` per unit (``head_dim`` or ``n_rep · head_dim``).
        hidden_on_writes: apply the ``hidden`` mask to the block's writes. Pre-norm models may instead mask
            the residual stream where it is read (every norm's input): the same function, with no activation
            saved for the mask's gradient (the norm saves its input anyway).
    """
    hooks: Hooks = []
    (attn_path, attn_module), (mlp_path, mlp_module) = attn_out, mlp_out
    # A whole-block gate z scales the block's write. When the output projection has no bias, z·(W x) = W (z·x):
    # it is applied to the projection's *input*, which the projection saves anyway (no extra saved activation).
    z_on_input = {
        block: block in structures and getattr(base_layer(module), "bias", None) is None
        for block, module in (("attn_block", attn_module), ("mlp_block", mlp_module))
    }

    def block_scale(block: str):
        if not z_on_input[block]:
            return None
        z = source.mask(block)
        return None if z is None else z[0, layer]

    def unit_mask(structure: str):
        m = source.mask(structure)
        if m is None or getattr(source, "mask_path", "merged") != "merged":  # "frozen": a method masks W x
            return None
        return m[layer]

    if "heads" in structures or z_on_input["attn_block"]:
        use_heads = "heads" in structures

        def head_pre_hook(module, args):
            m = unit_mask("heads") if use_heads else None
            z = block_scale("attn_block")
            x = args[0]  # (..., head_units · head_width)
            if m is None:
                return None if z is None else (source.multiply(x, z),) + tuple(args[1:])
            factor = m[:, None] if z is None else m[:, None] * z
            masked = source.multiply(x.view(*x.shape[:-1], head_units, head_width), factor)
            return (masked.view_as(x),) + tuple(args[1:])

        hooks.append((attn_path, attn_module, attn_module.register_forward_pre_hook(head_pre_hook)))

    if "ffn" in structures or z_on_input["mlp_block"]:
        use_ffn = "ffn" in structures

        def ffn_pre_hook(module, args):
            m = unit_mask("ffn") if use_ffn else None
            z = block_scale("mlp_block")
            factor = m if z is None else (z if m is None else m * z)
            return None if factor is None else (source.multiply(args[0], factor),) + tuple(args[1:])

        hooks.append((mlp_path, mlp_module, mlp_module.register_forward_pre_hook(ffn_pre_hook)))

    for block, path, module in (("attn_block", attn_path, attn_module), ("mlp_block", mlp_path, mlp_module)):
        use_block = block in structures and not z_on_input[block]
        use_hidden = hidden_on_writes and "hidden" in structures
        if not (use_block or use_hidden):
            continue

        def write_hook(module, args, output, block=block, use_block=use_block, use_hidden=use_hidden):
            factor = None
            if use_block and (z := source.mask(block)) is not None:
                factor = z[0, layer]
            if use_hidden and (h := source.mask("hidden")) is not None:
                factor = h[0] if factor is None else h[0] * factor
            return output if factor is None else source.multiply(output, factor)

        hooks.append((path, module, module.register_forward_hook(write_hook)))
    return hooks


def install_transformer_hooks(adapter: TransformerAdapter, source: MaskSource, structures: set[str]) -> Hooks:
    """The hooks of a :class:`~lightning_prune.adapters.transformer.TransformerAdapter`, read off its ``layout``:
    ``hidden`` on the outputs of the embedding tables that no LayerNorm follows (``layout.embeddings``) and on every
    LayerNorm (:func:`install_layer_norm_hooks`), and :func:`install_block_hooks` of every layer (one head per
    ``heads`` unit, ``hidden`` on the writes)."""
    p, layout = adapter.prefix, adapter.layout
    hooks: Hooks = []
    if "hidden" in structures:

        def embed_hook(module, args, output):
            m = source.mask("hidden")
            return output if m is None else source.multiply(output, m[0])

        for name in layout.embeddings:
            table = adapter.backbone.get_submodule(name)
            hooks.append((f"{p}{name}", table, table.register_forward_hook(embed_hook)))
        hooks += install_layer_norm_hooks(source, [(f"{p}{name}", norm) for name, norm in adapter.layer_norms()])
    for l, layer in enumerate(adapter.layers):
        attn_out, mlp_out = layer_sites(layer, f"{p}{layout.layers}.{l}.", (layout.attn_out, layout.mlp_out))
        hooks += install_block_hooks(source, structures, l, attn_out, mlp_out, adapter.num_heads, adapter.head_dim)
    return hooks


def install_layer_norm_hooks(source: MaskSource, norms: Iterable[tuple[str, nn.Module]]) -> Hooks:
    """``hidden`` on the LayerNorms ``(path, module)``: each normalises over the kept dims only and multiplies its
    output by the mask (:func:`~lightning_prune.adapters.norms.masked_layer_norm`)."""

    def norm_hook(module, args, output):
        m = source.mask("hidden")
        return output if m is None else masked_layer_norm(module, args[0], m[0])

    return [(path, norm, norm.register_forward_hook(norm_hook)) for path, norm in norms]
