"""Dims inside every head of a layer: ATP's K/Q and V masks over ``head_dim`` (Lu et al., arXiv 2412.14426).

Two per-layer structures of RoPE attention (the Llama family):

* ``qk_dims``: one mask per layer over the query/key dims, shared by every query head and every KV head (so
  GQA stays valid). HF's ``rotate_half`` rotates dim ``i`` with dim ``i + head_dim/2``, so the unit is the
  **pair**: ``head_dim/2`` units, unit ``j`` masks dims ``j`` and ``j + head_dim/2`` of every q and k head.
  Masking both members of a pair before RoPE is exact (RoPE only mixes within a pair), and a dim that is zero
  in q (and k) adds nothing to ``q·k``: the same as deleting it from the dot product. The scaling stays the
  original ``1/sqrt(head_dim)``.
* ``v_dims``: one mask per layer over the value dims, shared by every head: ``v_proj`` rows and ``o_proj``
  columns of every head. Attention is linear in ``v`` per dim, so the mask acts at ``o_proj``'s input (which
  ``o_proj`` saves anyway), like ``heads``.

Where the ``qk_dims`` mask acts in the forward (hooks, so peft LoRA wrappers keep working):

* plain q/k (Llama, Mistral, Qwen2): the outputs of ``q_proj`` and ``k_proj``, before RoPE;
* q/k RMSNorms over ``head_dim`` (Qwen3): masking before the norm changes the norm's statistics and masking
  after it keeps the pruned rows alive (the norm still reads them). The hooks instead make the norm run over the
  kept dims only, as the ``hidden`` structure does for the residual stream: ``RMSNorm(c·m⊙x)/c`` with
  ``c = sqrt(head_dim / kept dims)`` equals the compact model's norm over the kept dims (same weight slice, same
  eps) exactly, and its output is 0 at pruned dims. Exports then need binary masks.

The family's adapter names these sites (the Llama family reads them off its layer table,
:data:`~lightning_prune.adapters.llama.layout.LLAMA_LAYER`); the hooks here know no module names.

The compact layout of a head's kept q/k dims is ``[kept first halves, their partner second halves]``, so the
compact ``rotate_half`` pairs the same dims; the compact attention reads the rotary ``cos``/``sin`` at those
indices (:func:`qk_dim_index`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource

Hooks = list[tuple[str, nn.Module, RemovableHandle]]
#: ``(module path, module)``: where a hook acts
Site = tuple[str, nn.Module]


def pair_units(head_dim: int) -> torch.Tensor:
    """The ``qk_dims`` unit of each of a head's dims: ``d mod head_dim/2`` (``rotate_half``'s pairing)."""
    return torch.arange(head_dim) % (head_dim // 2)


def qk_dim_index(pairs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A head's kept q/k dims in compact order: the kept pairs' first members, then their partners."""
    return torch.cat([pairs, pairs + head_dim // 2])


def _merged(source: MaskSource) -> bool:
    # "frozen": a method masks the frozen path W x itself (ATP's LoRA update); the adapter's hooks stand aside
    return getattr(source, "mask_path", "merged") == "merged"


def install_head_dim_hooks(
    source: MaskSource,
    structures: set[str],
    layer: int,
    head_dim: int,
    qk_outputs: Sequence[Site],
    qk_norms: Sequence[Site],
    v_input: Site,
) -> Hooks:
    """Hooks of ``qk_dims`` / ``v_dims`` for one attention block, at the sites the family's layout names (each
    ``(module path, module)``), so that this module knows no family's module names.

    Args:
        source: where masks come from (the pruner).
        structures: the gated structures.
        layer: the block's row in the per-layer structures.
        head_dim: the original head dim.
        qk_outputs: the projections whose outputs are the q and k heads, before RoPE (``q_proj``, ``k_proj``).
        qk_norms: the RMSNorms over ``head_dim`` on q and k (Qwen3's ``q_norm``, ``k_norm``); empty when the model
            has none. When given, ``qk_dims`` acts at them instead of at ``qk_outputs``.
        v_input: the projection whose input is every query head's values (``o_proj``).
    """
    hooks: Hooks = []

    def pair_factor() -> torch.Tensor | None:  # (head_dim,): the layer's pair mask on both halves
        m = source.mask("qk_dims")
        return None if m is None else m[layer].repeat(2)

    # derived once per forward, before any block runs (gradient checkpointing recomputes the same ops)
    if "qk_dims" in structures:
        source.derive(f"qk_pairs.{layer}", pair_factor)

    if "qk_dims" in structures and qk_norms:

        def norm_scale() -> torch.Tensor | None:
            m = source.mask("qk_dims")
            return None if m is None else torch.sqrt(head_dim / (2 * m[layer].sum()).clamp_min(1e-6))

        source.derive(f"qk_norm_scale.{layer}", norm_scale)

        def norm_pre_hook(module, args):
            scale = source.cached(f"qk_norm_scale.{layer}")
            if scale is None:
                return None
            # the frozen-path mode (ATP's LoRA update) masks W x in q/k_proj; the norm still runs over kept dims
            factor = source.cached(f"qk_pairs.{layer}") * scale if _merged(source) else scale
            return (source.multiply(args[0], factor),) + tuple(args[1:])  # (..., heads, head_dim)

        def norm_post_hook(module, args, output):
            scale = source.cached(f"qk_norm_scale.{layer}")
            return output if scale is None else source.multiply(output, 1.0 / scale)

        for path, norm in qk_norms:
            hooks.append((path, norm, norm.register_forward_pre_hook(norm_pre_hook)))
            hooks.append((path, norm, norm.register_forward_hook(norm_post_hook)))
    elif "qk_dims" in structures:

        def qk_hook(module, args, output):
            if not _merged(source) or (factor := source.cached(f"qk_pairs.{layer}")) is None:
                return output
            heads = output.view(*output.shape[:-1], -1, head_dim)  # (..., heads, head_dim)
            return source.multiply(heads, factor).view_as(output)

        for path, proj in qk_outputs:
            hooks.append((path, proj, proj.register_forward_hook(qk_hook)))

    if "v_dims" in structures:

        def v_pre_hook(module, args):
            m = source.mask("v_dims")
            if m is None or not _merged(source):
                return None
            x = args[0]  # (..., num_heads · head_dim): every query head's values
            masked = source.multiply(x.view(*x.shape[:-1], -1, head_dim), m[layer])
            return (masked.view_as(x),) + tuple(args[1:])

        path, proj = v_input
        hooks.append((path, proj, proj.register_forward_pre_hook(v_pre_hook)))
    return hooks
