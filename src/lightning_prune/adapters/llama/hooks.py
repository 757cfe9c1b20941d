"""Where the Llama family's masks act: forward hooks only, so peft LoRA wrappers keep working.

``hidden`` is applied where the residual stream is read (every RMSNorm's input, with the norm rescaled to the kept
dims); ``qk_dims`` / ``v_dims`` inside the attention (:mod:`lightning_prune.adapters.head_dims`); ``heads``, ``ffn``
and the block gates at the output projections (:func:`~lightning_prune.adapters.hooks.install_block_hooks`), which
:func:`~lightning_prune.adapters.llama.layout.block_output` finds in the layer table. The ``qk_dims`` / ``v_dims``
hooks are family-neutral code that acts inside the attention, at sites the layer table names too
(:data:`~lightning_prune.adapters.llama.layout.QK_OUTPUTS`, ``QK_NORMS``, ``V_INPUT``: the pre-RoPE q/k outputs or
Qwen3's q/k norms, ``o_proj``'s input).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.head_dims import install_head_dim_hooks
from lightning_prune.adapters.hooks import install_block_hooks, layer_sites
from lightning_prune.adapters.llama.layout import (
    LAYER_NORMS,
    QK_NORMS,
    QK_OUTPUTS,
    V_INPUT,
    block_output,
    unit_width,
)

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter


def install_llama_hooks(
    adapter: LlamaAdapter, source: MaskSource, structures: set[str]
) -> list[tuple[str, nn.Module, RemovableHandle]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    hooks: list[tuple[str, nn.Module, RemovableHandle]] = []
    p, d = adapter.prefix, adapter.hidden_size

    def add(path: str, module: nn.Module, handle: RemovableHandle) -> None:
        hooks.append((path, module, handle))

    if "hidden" in structures:
        # The residual stream is masked where it is *read*: every norm's input is m ⊙ r. Since r is a sum
        # (embedding + block writes), this is the same function as masking the embedding and every write, but
        # the masked tensor is the norm's input, which the norm saves anyway (no extra activation memory).

        def norm_scale() -> torch.Tensor | None:
            m = source.mask("hidden")
            return None if m is None else torch.sqrt(d / m[0].sum().clamp_min(1e-6))

        def norm_input_mask() -> torch.Tensor | None:
            scale = source.cached("hidden_norm_scale")
            return None if scale is None else source.mask("hidden")[0] * scale

        source.derive("hidden_norm_scale", norm_scale)
        source.derive("hidden_norm_input_mask", norm_input_mask)

        # RMSNorm(c·m⊙x)/c with c = sqrt(d/Σm) is the RMS norm over the kept dims only (0 elsewhere), which
        # is exactly what the compact model's norm computes with the same weights and eps.
        def norm_pre_hook(module, args):
            factor = source.cached("hidden_norm_input_mask")
            if factor is None:
                return None
            return (source.multiply(args[0], factor),) + tuple(args[1:])

        def norm_post_hook(module, args, output):
            scale = source.cached("hidden_norm_scale")
            return output if scale is None else source.multiply(output, 1.0 / scale)

        norms = [(f"{p}norm", adapter.backbone.norm)]
        for l, layer in enumerate(adapter.layers):
            norms += [(f"{p}layers.{l}.{name}", getattr(layer, name)) for name in LAYER_NORMS]
        for path, norm in norms:
            add(path, norm, norm.register_forward_pre_hook(norm_pre_hook))
            add(path, norm, norm.register_forward_hook(norm_post_hook))

    # heads, ffn and the block gates act at each block's write (the input of o_proj / down_proj carries the units)
    attn_out, mlp_out = block_output("self_attn"), block_output("mlp")
    head_units, head_width = adapter.num_kv_heads, unit_width(adapter, attn_out.inp)
    # only resolved when gated: Phi-3 (fused qkv_proj, no q_proj / k_proj) refuses qk_dims and v_dims at attach
    head_dims = bool(structures & {"qk_dims", "v_dims"})
    for l, layer in enumerate(adapter.layers):
        base = f"{p}layers.{l}."
        if head_dims:
            qk_outputs = layer_sites(layer, base, QK_OUTPUTS)
            qk_norms = layer_sites(layer, base, QK_NORMS) if adapter.qk_norms else []
            (v_input,) = layer_sites(layer, base, (V_INPUT,))
            hooks += install_head_dim_hooks(source, structures, l, adapter.head_dim, qk_outputs, qk_norms, v_input)
        attn, mlp = layer_sites(layer, base, (attn_out.path, mlp_out.path))
        # hidden is masked at the norms' inputs instead (above), not on the blocks' writes
        hooks += install_block_hooks(source, structures, l, attn, mlp, head_units, head_width, hidden_on_writes=False)
    return hooks
