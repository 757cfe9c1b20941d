"""The GPT-2 cost terms: every parameter, and the attention FLOPs, as a function of the kept units.

``c_attn`` holds a head's query, key and value columns (three head widths per unit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.adapters.base import base_layer, fixed_size_terms, lm_head_term
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def gpt2_cost_terms(adapter: GPT2Adapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    d, hd, nh = adapter.hidden_size, adapter.head_dim, adapter.num_heads
    hidden = Dim(d, "hidden", 0, 1)
    p = adapter.prefix
    terms: list[CostTerm] = []
    covered: set[str] = set()
    for name in ("wte", "wpe"):
        table = base_layer(getattr(adapter.backbone, name))
        terms.append(CostTerm(name, out=hidden, inp=Dim(table.num_embeddings)))
        covered.add(f"{p}{name}.weight")
    norms = ["ln_f"]
    for l, layer in enumerate(adapter.layers):
        qkv = Dim(3 * nh * hd, "heads", l, 3 * hd)  # a head's query, key and value columns of c_attn
        heads = Dim(nh * hd, "heads", l, hd)
        ffn = Dim(adapter.intermediate_size, "ffn", l, 1)
        a_gate, m_gate = (("attn_block", 0, l),), (("mlp_block", 0, l),)
        base = f"h.{l}."
        for path, out, inp, gate in (
            ("attn.c_attn", qkv, hidden, a_gate),
            ("attn.c_proj", hidden, heads, a_gate),
            ("mlp.c_fc", ffn, hidden, m_gate),
            ("mlp.c_proj", hidden, ffn, m_gate),
        ):
            has_bias = base_layer(layer.get_submodule(path)).bias is not None
            terms.append(CostTerm(f"{base}{path}", out, inp, gate, has_bias, True, True, 2.0))
            covered.update({f"{p}{base}{path}.weight", f"{p}{base}{path}.bias"})
        # attention scores and weighted values: 4 · T · (query dims) FLOPs per token, no parameters
        terms.append(CostTerm(f"{base}attn.scores", heads, Dim(flops_seq_len), a_gate, False, True, False, 4.0))
        norms += [f"{base}ln_1", f"{base}ln_2"]
    for name in norms:
        norm = adapter.backbone.get_submodule(name)
        terms.append(CostTerm(name, hidden, bias=norm.bias is not None, params=norm.weight is not None))
        covered.update({f"{p}{name}.weight", f"{p}{name}.bias"})
    terms += lm_head_term(adapter, hidden, covered)
    return terms + fixed_size_terms(adapter.model, covered)  # nothing else is resized
