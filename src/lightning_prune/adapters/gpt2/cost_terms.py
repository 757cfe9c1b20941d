"""The GPT-2 cost terms: every parameter, and the attention FLOPs, as a function of the kept units.

``c_attn`` holds a head's query, key and value columns (three head widths per unit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.adapters.base import lm_head_term
from lightning_prune.adapters.transformer import CostTable
from lightning_prune.cost import CostTerm

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.gpt2.adapter import GPT2Adapter


def gpt2_cost_terms(adapter: GPT2Adapter, flops_seq_len: int) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    table = CostTable(adapter)
    for name in ("wte", "wpe"):
        table.embedding(name, getattr(adapter.backbone, name))
    table.blocks(flops_seq_len)
    table.norms()
    table.terms += lm_head_term(adapter, table.hidden, table.covered)
    return table.finish()  # nothing else is resized
