"""Structures: what a gate controls in a model.

A structure is a named family of coupled units that are removed together, e.g. ``heads`` (a head's
query, key and value rows and its output-projection columns), ``ffn`` (an FFN channel: a gate/up row
and a down-projection column), ``hidden`` (one dimension of the residual stream in every layer) or
``qk_dims`` / ``v_dims`` (dims inside every head of a layer, ATP's attention-dim masks).
Adapters say which structures a model supports and how many rows and units each has.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Structure names known to the library, with their meaning. Adapters support a subset.
STRUCTURE_DOCS: dict[str, str] = {
    "heads": "attention heads per layer (for GQA models: one unit per key/value group, i.e. a KV head "
    "and the query heads that share it, so every export is a valid GQA config)",
    "ffn": "FFN channels per layer (gate/up rows and down-projection columns)",
    "hidden": "hidden (embedding) dims shared by all layers: embedding, every residual write, norms, LM head",
    "attn_block": "whole attention blocks (one unit per layer)",
    "mlp_block": "whole MLP blocks (one unit per layer)",
    "qk_dims": "query/key dims per layer, shared by all heads of the layer; one unit per RoPE pair (dims i and "
    "i + head_dim/2 of every q and k head), so head_dim/2 units (Llama family)",
    "v_dims": "value dims per layer, shared by all heads of the layer: v_proj rows and o_proj columns of every "
    "head (Llama family)",
}

#: Structures whose compact models no standard config can describe (per-layer q/k and v head dims that differ
#: from each other and from ``head_dim``, a subset of the rotary frequencies, the original attention scaling):
#: their exports always use the per-layer modeling file, even with ``uniform=True``.
PER_LAYER_EXPORT_STRUCTURES: frozenset[str] = frozenset({"qk_dims", "v_dims"})


@dataclass(frozen=True)
class StructureSpec:
    """Shape of one structure's gate in a particular model.

    Attributes:
        name: the structure's name (a key of :data:`STRUCTURE_DOCS` or an adapter's own).
        rows: independent rows (one per layer for per-layer structures, 1 for global ones).
        units: units per row.
        per_layer: whether rows are layers (ranked separately; ``uniform`` forces equal counts).
    """

    name: str
    rows: int
    units: int
    per_layer: bool = True
