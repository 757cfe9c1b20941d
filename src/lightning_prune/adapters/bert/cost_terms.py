"""The BERT family's cost terms: every parameter, and the attention FLOPs, as a function of the kept units."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from lightning_prune.adapters.base import base_layer, fixed_size_terms
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def bert_cost_terms(adapter: BertAdapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    d, hd, nh = adapter.hidden_size, adapter.head_dim, adapter.num_heads
    hidden = Dim(d, "hidden", 0, 1)
    p = adapter.prefix
    terms: list[CostTerm] = []
    covered: set[str] = set()

    def bias_of(module: nn.Module) -> bool:
        return base_layer(module).bias is not None

    emb = adapter.backbone.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        module = getattr(emb, name, None)
        if module is not None:
            terms.append(CostTerm(f"embeddings.{name}", out=hidden, inp=Dim(base_layer(module).num_embeddings)))
            covered.add(f"{p}embeddings.{name}.weight")
    norms = [("embeddings.LayerNorm", emb.LayerNorm)]
    for l, layer in enumerate(adapter.layers):
        heads = Dim(nh * hd, "heads", l, hd)
        ffn = Dim(adapter.intermediate_size, "ffn", l, 1)
        a_gate, m_gate = (("attn_block", 0, l),), (("mlp_block", 0, l),)
        base = f"encoder.layer.{l}."
        linears = (
            ("attention.self.query", heads, hidden, a_gate),
            ("attention.self.key", heads, hidden, a_gate),
            ("attention.self.value", heads, hidden, a_gate),
            ("attention.output.dense", hidden, heads, a_gate),
            ("intermediate.dense", ffn, hidden, m_gate),
            ("output.dense", hidden, ffn, m_gate),
        )
        for path, out, inp, gate in linears:
            module = layer.get_submodule(path)
            terms.append(CostTerm(f"{base}{path}", out, inp, gate, bias_of(module), True, True, 2.0))
            covered.update({f"{p}{base}{path}.weight", f"{p}{base}{path}.bias"})
        # attention scores and weighted values: 4 · T · (query dims) FLOPs per token, no parameters
        scores = CostTerm(f"{base}attention.scores", heads, Dim(flops_seq_len), a_gate, False, True, False, 4.0)
        terms.append(scores)
        norms += [
            (f"{base}attention.output.LayerNorm", layer.attention.output.LayerNorm),
            (f"{base}output.LayerNorm", layer.output.LayerNorm),
        ]
    for name, norm in norms:
        terms.append(CostTerm(name, hidden, bias=norm.bias is not None, params=norm.weight is not None))
        covered.update({f"{p}{name}.weight", f"{p}{name}.bias"})
    for path, module in adapter.readouts.items():
        lin = base_layer(module)
        terms.append(CostTerm(path, Dim(lin.out_features), hidden, bias=lin.bias is not None, flops_per_param=2.0))
        covered.update({f"{path}.weight", f"{path}.bias"})
    # Everything else (the classifier after the pooler, RoBERTa's out_proj, ...) keeps its size.
    return terms + fixed_size_terms(adapter.model, covered)
