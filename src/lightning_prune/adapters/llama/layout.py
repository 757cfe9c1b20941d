"""One description of a Llama-family decoder layer: which structure indexes the rows and columns of every projection.

:data:`LLAMA_LAYER` says, for each projection, which structure's units its output rows and its input columns
belong to (:class:`Axis`) and which block gate scales it. The cost terms (:mod:`.cost_terms`), the slicing of the
export (:mod:`.surgery`), the block hooks (:mod:`.hooks`) and ATP's LoRA couplings
(:func:`lightning_prune.methods.atp.layout.llama_layout`) read it rather than each spelling out the same mapping, so
that they cannot drift apart. Phi-3 reuses it: its fused projections are named by the Llama projections whose rows
they stack (``fused_parts`` of the adapter, :func:`fused_rows`).

Sizes come from the adapter (``head_dim``, ``num_heads``, ``num_kv_heads``, ``n_rep``, ``intermediate_size``,
``hidden_size``): the table itself holds no numbers, so one table serves every model of the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lightning_prune.adapters.head_dims import pair_units
from lightning_prune.cost import Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.llama.adapter import LlamaAdapter


@dataclass(frozen=True)
class Axis:
    """The output rows or the input columns of a projection, as the structures see them.

    Attributes:
        structure: the structure whose units index the axis: ``"heads"``, ``"ffn"`` or ``"hidden"``.
        query: for ``"heads"``: the axis holds every query head, ``n_rep`` per unit (a KV group); otherwise one
            head per unit (the key or value head of the group).
        dims: for ``"heads"``: the structure over the dims inside every head, ``"qk_dims"`` (RoPE pairs: q and k
            must agree on them for ``q·k``) or ``"v_dims"`` (value dims, read by ``o_proj``).
    """

    structure: str
    query: bool = False
    dims: str | None = None


HIDDEN = Axis("hidden")
FFN = Axis("ffn")
QUERY_QK = Axis("heads", query=True, dims="qk_dims")  # q rows: every query head's q/k dims
KEY_QK = Axis("heads", dims="qk_dims")  # k rows: every KV head's q/k dims
VALUE = Axis("heads", dims="v_dims")  # v rows: every KV head's value dims
QUERY_VALUE = Axis("heads", query=True, dims="v_dims")  # o_proj columns: the values every query head read


@dataclass(frozen=True)
class Projection:
    """One ``nn.Linear`` of a layer: its rows (``out``) and columns (``inp``) and the block gate scaling it.

    Attributes:
        path: module path inside the layer (``"self_attn.q_proj"``); its first part is the block.
        out: what indexes the weight's rows (and the bias).
        inp: what indexes the weight's columns.
        gate: the whole-block structure (``"attn_block"`` / ``"mlp_block"``) that removes the projection with its
            block.
    """

    path: str
    out: Axis
    inp: Axis
    gate: str

    @property
    def block(self) -> str:
        """The block module holding the projection (``"self_attn"`` or ``"mlp"``)."""
        return self.path.split(".")[0]

    @property
    def name(self) -> str:
        """The projection's attribute name in its block (``"q_proj"``)."""
        return self.path.split(".")[-1]


#: Every projection of a Llama-family layer, in module order. A ``heads`` unit is a KV group: whole groups keep
#: ``n_rep`` unchanged, so every export is a valid GQA config. The projections writing the residual stream
#: (``out`` is :data:`HIDDEN`) are where the hooks apply the units' masks, so the export folds them there.
LLAMA_LAYER: tuple[Projection, ...] = (
    Projection("self_attn.q_proj", out=QUERY_QK, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.k_proj", out=KEY_QK, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.v_proj", out=VALUE, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.o_proj", out=HIDDEN, inp=QUERY_VALUE, gate="attn_block"),
    Projection("mlp.gate_proj", out=FFN, inp=HIDDEN, gate="mlp_block"),
    Projection("mlp.up_proj", out=FFN, inp=HIDDEN, gate="mlp_block"),
    Projection("mlp.down_proj", out=HIDDEN, inp=FFN, gate="mlp_block"),
)

#: The attention's FLOPs without parameters, per token: the scores read every query head's q/k dims and the
#: weighted sum writes every query head's value dims (each ``2 · T`` per dim).
ATTENTION_FLOPS: tuple[tuple[str, Axis], ...] = (("scores", QUERY_QK), ("values", QUERY_VALUE))

#: A layer's RMSNorms over the residual stream, and Qwen3's RMSNorms over ``head_dim`` on q and k.
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")
QK_NORMS = ("q_norm", "k_norm")

#: Dims of a head per unit of a head-dim structure: a RoPE pair (``rotate_half`` mixes dim ``i`` with
#: ``i + head_dim/2``) or a single value dim.
DIMS_PER_UNIT = {"qk_dims": 2, "v_dims": 1}


def projection(path: str) -> Projection:
    """The projection of :data:`LLAMA_LAYER` at ``path`` in a layer."""
    return next(p for p in LLAMA_LAYER if p.path == path)


def block_output(block: str) -> Projection:
    """The projection of ``block`` writing the residual stream (``o_proj``, ``down_proj``)."""
    return next(p for p in LLAMA_LAYER if p.block == block and p.out == HIDDEN)


def layer_projections(fused_parts: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The module paths of a layer's projections in order: a fused projection in place of the parts it stacks."""
    home = {part: fused for fused, parts in fused_parts.items() for part in parts}
    return tuple(dict.fromkeys(home.get(p.path, p.path) for p in LLAMA_LAYER))


def head_count(adapter: LlamaAdapter, axis: Axis) -> int:
    """Heads along a ``heads`` axis: every query head, or one per KV group."""
    return adapter.num_heads if axis.query else adapter.num_kv_heads


def unit_width(adapter: LlamaAdapter, axis: Axis) -> int:
    """Rows (or columns) per unit of the axis's structure: ``n_rep · head_dim`` for query heads, ``head_dim`` for
    key/value heads, 1 for an FFN channel or a hidden dim."""
    if axis.structure != "heads":
        return 1
    return (adapter.n_rep if axis.query else 1) * adapter.head_dim


def axis_size(adapter: LlamaAdapter, axis: Axis) -> int:
    """The full length of the axis."""
    if axis.structure == "hidden":
        return adapter.hidden_size
    if axis.structure == "ffn":
        return adapter.intermediate_size
    return head_count(adapter, axis) * adapter.head_dim


def fused_rows(adapter: LlamaAdapter) -> dict[str, tuple[tuple[str, int], ...]]:
    """``{fused path: ((part path, rows), ...)}``: the rows every part of a fused projection holds, in order."""
    return {
        fused: tuple((part, axis_size(adapter, projection(part).out)) for part in parts)
        for fused, parts in adapter.fused_parts.items()
    }


# -- the cost model's view ------------------------------------------------------------------------------------------
def axis_dim(adapter: LlamaAdapter, axis: Axis, layer: int) -> Dim:
    """The cost model's :class:`~lightning_prune.cost.Dim` of the axis in ``layer``: kept units × unit width, and a
    heads axis scaled by the kept fraction of every head's dims."""
    if axis.structure == "hidden":
        return Dim(adapter.hidden_size, "hidden", 0, 1)
    if axis.structure == "ffn":
        return Dim(adapter.intermediate_size, "ffn", layer, 1)
    units = adapter.head_dim // DIMS_PER_UNIT[axis.dims]
    return Dim(
        axis_size(adapter, axis), "heads", layer, unit_width(adapter, axis), scaled_by=((axis.dims, layer, units),)
    )


# -- ATP's view: which unit owns every row ---------------------------------------------------------------------------
def unit_ownership(adapter: LlamaAdapter, axis: Axis, structure: str) -> tuple[int, torch.Tensor | None] | None:
    """How ``structure``'s units own the axis: ``(rows per unit, None)`` when a unit owns consecutive rows,
    ``(rows per unit, unit of every row)`` for a head-dim structure (unit ``j`` recurs in every head), ``None``
    when ``structure`` does not index the axis."""
    if axis.structure == structure:
        return unit_width(adapter, axis), None
    if axis.dims == structure:
        heads, hd = head_count(adapter, axis), adapter.head_dim
        within = pair_units(hd) if structure == "qk_dims" else torch.arange(hd)  # the unit of each dim of a head
        return heads * DIMS_PER_UNIT[structure], within.repeat(heads)
    return None


# -- the export's view: kept indices and folded masks ----------------------------------------------------------------
@dataclass(frozen=True)
class KeptUnits:
    """What one layer keeps, as indices: every axis's kept rows or columns follow (:func:`kept_index`).

    Attributes:
        groups: kept KV groups (none when the attention block is gone).
        heads: kept query heads (``n_rep`` per kept group).
        dims: kept dims of a head per head-dim structure (``"qk_dims"`` in compact order: the kept pairs' first
            members, then their partners; ``"v_dims"``).
        ffn: kept FFN channels (none when the MLP block is gone).
        hidden: kept hidden dims.
    """

    groups: torch.Tensor
    heads: torch.Tensor
    dims: dict[str, torch.Tensor]
    ffn: torch.Tensor
    hidden: torch.Tensor


def kept_index(adapter: LlamaAdapter, axis: Axis, kept: KeptUnits) -> torch.Tensor:
    """Indices of the axis's kept rows (or columns): each kept head's kept dims, the kept channels or hidden dims."""
    if axis.structure == "hidden":
        return kept.hidden
    if axis.structure == "ffn":
        return kept.ffn
    heads = kept.heads if axis.query else kept.groups
    return (heads[:, None] * adapter.head_dim + kept.dims[axis.dims]).flatten()


def dims_mask(adapter: LlamaAdapter, axis: Axis, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head-dim mask of a ``heads`` axis over its whole length (``masks``: one layer's row per structure; a
    RoPE pair's value on both of its dims)."""
    per_head = masks[axis.dims].repeat(DIMS_PER_UNIT[axis.dims])
    return per_head.repeat(head_count(adapter, axis))


def axis_mask(adapter: LlamaAdapter, axis: Axis, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every mask indexing the axis, over its whole length (``masks``: one layer's row per structure)."""
    if axis.structure != "heads":
        return masks[axis.structure]
    return masks["heads"].repeat_interleave(unit_width(adapter, axis)) * dims_mask(adapter, axis, masks)
