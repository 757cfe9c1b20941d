"""The Llama family's cost terms: every parameter, and the attention FLOPs, as a function of the kept units.

Heads are KV groups (a query width of ``n_rep · head_dim`` per unit), scaled by the kept fraction of every head's
q/k dims (``qk_dims``, RoPE pairs) and value dims (``v_dims``); every projection of a block also carries the block's
gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lightning_prune.adapters.base import base_layer, fixed_size_terms, lm_head_term
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter


def _has_bias(module: nn.Module) -> bool:
    return base_layer(module).bias is not None


def llama_cost_terms(adapter: LlamaAdapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    d, hd, nh, nkv = adapter.hidden_size, adapter.head_dim, adapter.num_heads, adapter.num_kv_heads
    hidden = Dim(d, "hidden", 0, 1)
    terms: list[CostTerm] = []
    covered: set[str] = set()
    # a fused projection (Phi-3's qkv_proj) holds the rows of several Llama projections: one term for each part
    home = {part: fused for fused, parts in adapter.fused_parts().items() for part, _ in parts}
    embed = base_layer(adapter.backbone.embed_tokens)
    terms.append(CostTerm("embed_tokens", out=hidden, inp=Dim(embed.num_embeddings)))
    covered.add(f"{adapter.prefix}embed_tokens.weight")
    for l, layer in enumerate(adapter.layers):
        qk, v = (("qk_dims", l, hd // 2),), (("v_dims", l, hd),)  # fractions of every head's dims
        q = Dim(nh * hd, "heads", l, adapter.n_rep * hd, scaled_by=qk)
        k = Dim(nkv * hd, "heads", l, hd, scaled_by=qk)
        kv = Dim(nkv * hd, "heads", l, hd, scaled_by=v)
        o_in = Dim(nh * hd, "heads", l, adapter.n_rep * hd, scaled_by=v)
        ffn = Dim(adapter.intermediate_size, "ffn", l, 1)
        a_gate = (("attn_block", 0, l),)
        m_gate = (("mlp_block", 0, l),)
        base = f"{adapter.prefix}layers.{l}."
        for name, out, inp in (
            ("q_proj", q, hidden),
            ("k_proj", k, hidden),
            ("v_proj", kv, hidden),
            ("o_proj", hidden, o_in),
        ):
            path = home.get(f"self_attn.{name}", f"self_attn.{name}")
            mod = layer.get_submodule(path)
            terms.append(CostTerm(f"layers.{l}.self_attn.{name}", out, inp, a_gate, _has_bias(mod), True, True, 2.0))
            covered.update({f"{base}{path}.weight", f"{base}{path}.bias"})
        # attention scores (2 · T · query/key dims) and weighted values (2 · T · value dims) per token, no params
        terms.append(CostTerm(f"layers.{l}.self_attn.scores", q, Dim(flops_seq_len), a_gate, False, True, False, 2.0))
        terms.append(
            CostTerm(f"layers.{l}.self_attn.values", o_in, Dim(flops_seq_len), a_gate, False, True, False, 2.0)
        )
        if adapter.qk_norms:  # Qwen3's q/k RMSNorms over head_dim keep the kept q/k dims only
            for norm in ("q_norm", "k_norm"):
                terms.append(CostTerm(f"layers.{l}.self_attn.{norm}", Dim(hd, "qk_dims", l, 2)))
                covered.add(f"{base}self_attn.{norm}.weight")
        for name, out, inp in (("gate_proj", ffn, hidden), ("up_proj", ffn, hidden), ("down_proj", hidden, ffn)):
            path = home.get(f"mlp.{name}", f"mlp.{name}")
            mod = layer.get_submodule(path)
            terms.append(CostTerm(f"layers.{l}.mlp.{name}", out, inp, m_gate, _has_bias(mod), True, True, 2.0))
            covered.update({f"{base}{path}.weight", f"{base}{path}.bias"})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            terms.append(CostTerm(f"layers.{l}.{norm}", hidden))
            covered.add(f"{base}{norm}.weight")
    terms.append(CostTerm("norm", hidden))
    covered.add(f"{adapter.prefix}norm.weight")
    terms += lm_head_term(adapter, hidden, covered)
    # Anything else (Qwen3's q_norm/k_norm over head_dim, ...) is not resized by any structure.
    return terms + fixed_size_terms(adapter.model, covered)
