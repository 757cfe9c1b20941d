"""The Llama family's cost terms: every parameter, and the attention FLOPs, as a function of the kept units.

Each projection's term is read off :data:`~lightning_prune.adapters.llama.layout.LLAMA_LAYER`: its rows and columns
(heads are KV groups, a query width of ``n_rep · head_dim`` per unit, scaled by the kept fraction of every head's
q/k dims (``qk_dims``, RoPE pairs) or value dims (``v_dims``)) and its block's gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lightning_prune.adapters.base import base_layer, fixed_size_terms, lm_head_term
from lightning_prune.adapters.llama.layout import ATTENTION_FLOPS, HIDDEN, LAYER_NORMS, LLAMA_LAYER, QK_NORMS, axis_dim
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter


def _projection_terms(
    adapter: LlamaAdapter, layer: nn.Module, l: int, block: str, home: dict[str, str], covered: set[str]
) -> list[CostTerm]:
    """The terms of ``block``'s projections in layer ``l`` (a fused projection's keys are covered under its own
    path, ``home``), each read off its :data:`LLAMA_LAYER` row."""
    base, terms = f"{adapter.prefix}layers.{l}.", []
    for proj in (proj for proj in LLAMA_LAYER if proj.block == block):
        path, gate = home.get(proj.path, proj.path), ((proj.gate, 0, l),)
        out, inp = axis_dim(adapter, proj.out, l), axis_dim(adapter, proj.inp, l)
        has_bias = base_layer(layer.get_submodule(path)).bias is not None
        terms.append(CostTerm(f"layers.{l}.{proj.path}", out, inp, gate, has_bias, True, True, 2.0))
        covered.update({f"{base}{path}.weight", f"{base}{path}.bias"})
    return terms


def llama_cost_terms(adapter: LlamaAdapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    hidden = axis_dim(adapter, HIDDEN, 0)
    terms: list[CostTerm] = []
    covered: set[str] = set()
    embed = base_layer(adapter.backbone.embed_tokens)
    terms.append(CostTerm("embed_tokens", out=hidden, inp=Dim(embed.num_embeddings)))
    covered.add(f"{adapter.prefix}embed_tokens.weight")
    # a fused projection (Phi-3's qkv_proj) holds the rows of several Llama projections: one term for each part
    home = {part: fused for fused, parts in adapter.fused_parts.items() for part in parts}
    for l, layer in enumerate(adapter.layers):
        base = f"{adapter.prefix}layers.{l}."
        terms += _projection_terms(adapter, layer, l, "self_attn", home, covered)
        # attention scores (2 · T · query/key dims) and weighted values (2 · T · value dims) per token, no params
        for name, axis in ATTENTION_FLOPS:
            dim, seq, gate = axis_dim(adapter, axis, l), Dim(flops_seq_len), (("attn_block", 0, l),)
            terms.append(CostTerm(f"layers.{l}.self_attn.{name}", dim, seq, gate, False, True, False, 2.0))
        if adapter.qk_norms:  # Qwen3's q/k RMSNorms over head_dim keep the kept q/k dims only
            for norm in QK_NORMS:
                terms.append(CostTerm(f"layers.{l}.{norm}", Dim(adapter.head_dim, "qk_dims", l, 2)))
                covered.add(f"{base}{norm}.weight")
        terms += _projection_terms(adapter, layer, l, "mlp", home, covered)
        for norm in LAYER_NORMS:
            terms.append(CostTerm(f"layers.{l}.{norm}", hidden))
            covered.add(f"{base}{norm}.weight")
    terms.append(CostTerm("norm", hidden))
    covered.add(f"{adapter.prefix}norm.weight")
    terms += lm_head_term(adapter, hidden, covered)
    # Anything else is not resized by any structure.
    return terms + fixed_size_terms(adapter.model, covered)
