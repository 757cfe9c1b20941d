"""The BERT family's cost terms: every parameter, and the attention FLOPs, as a function of the kept units."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.adapters.base import base_layer
from lightning_prune.adapters.transformer import CostTable
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.bert.adapter import BertAdapter


def bert_cost_terms(adapter: BertAdapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    table = CostTable(adapter)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        module = getattr(adapter.backbone.embeddings, name, None)
        if module is not None:
            table.embedding(f"embeddings.{name}", module)
    table.blocks(flops_seq_len)
    table.norms()
    for path, module in adapter.readouts.items():  # their input shrinks with `hidden`, their output stays
        lin = base_layer(module)
        out = Dim(lin.out_features)
        table.terms.append(CostTerm(path, out, table.hidden, bias=lin.bias is not None, flops_per_param=2.0))
        table.covered.update({f"{path}.weight", f"{path}.bias"})
    # Everything else (the classifier after the pooler, RoBERTa's out_proj, ...) keeps its size.
    return table.finish()
