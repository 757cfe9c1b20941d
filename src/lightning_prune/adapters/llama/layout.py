"""One description of a Llama-family decoder layer: which structure indexes the rows and columns of every projection.

:data:`LLAMA_LAYER` says, for each projection, which structure's units its output rows and its input columns
belong to (:class:`Axis`) and which block gate scales it. The cost terms (:mod:`.cost_terms`), the export's slicing
(:mod:`.surgery`), the block hooks (:mod:`.hooks`) and ATP's LoRA couplings
(:func:`lightning_prune.methods.atp.layout.llama_layout`) are read off it, so they cannot drift apart. Phi-3 reuses
it: its fused projections name the Llama projections whose rows they stack (the adapter's ``fused_parts``).
The table holds no sizes; they come from the adapter (``head_dim``, ``num_heads``, ``num_kv_heads``, ``n_rep``,
``intermediate_size``, ``hidden_size``), so one table serves every model of the family.
"""

from __future__ import annotations

from collections import Counter
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
        structure: the structure whose units index the axis: ``"heads"`` (KV groups), ``"ffn"`` or ``"hidden"``.
        query: for ``"heads"``: the axis holds every query head, ``n_rep`` per unit; else one head per unit (k, v).
        dims: for ``"heads"``: the structure over the dims inside every head, ``"qk_dims"`` (RoPE pairs, on which
            q and k must agree for ``q·k``) or ``"v_dims"`` (value dims, which ``o_proj`` reads).
    """

    structure: str
    query: bool = False
    dims: str | None = None


HIDDEN, FFN = Axis("hidden"), Axis("ffn")
QUERY_QK = Axis("heads", query=True, dims="qk_dims")  # q rows
KEY_QK = Axis("heads", dims="qk_dims")  # k rows
VALUE = Axis("heads", dims="v_dims")  # v rows
QUERY_VALUE = Axis("heads", query=True, dims="v_dims")  # o_proj columns: the values every query head read


@dataclass(frozen=True)
class Projection:
    """One ``nn.Linear`` of a layer: ``path`` in the layer (its first part is the block), what indexes its rows
    (``out``, also the bias) and its columns (``inp``), and the ``gate`` (``attn_block`` / ``mlp_block``) that
    removes it with its block."""

    path: str
    out: Axis
    inp: Axis
    gate: str

    @property
    def block(self) -> str:
        return self.path.split(".")[0]


#: Every projection of a Llama-family layer, in module order. A ``heads`` unit is a KV group: whole groups keep
#: ``n_rep`` unchanged, so every export is a valid GQA config. The projections writing the residual stream (``out``
#: is :data:`HIDDEN`) are where the hooks apply the blocks' unit masks, so the export folds them there.
LLAMA_LAYER: tuple[Projection, ...] = (
    Projection("self_attn.q_proj", out=QUERY_QK, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.k_proj", out=KEY_QK, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.v_proj", out=VALUE, inp=HIDDEN, gate="attn_block"),
    Projection("self_attn.o_proj", out=HIDDEN, inp=QUERY_VALUE, gate="attn_block"),
    Projection("mlp.gate_proj", out=FFN, inp=HIDDEN, gate="mlp_block"),
    Projection("mlp.up_proj", out=FFN, inp=HIDDEN, gate="mlp_block"),
    Projection("mlp.down_proj", out=HIDDEN, inp=FFN, gate="mlp_block"),
)
#: The attention's FLOPs without parameters: the scores read every query head's q/k dims, the weighted sum writes
#: every query head's value dims (``2 · T`` per dim and token each).
ATTENTION_FLOPS: tuple[tuple[str, Axis], ...] = (("scores", QUERY_QK), ("values", QUERY_VALUE))
#: A layer's RMSNorms over the residual stream, and Qwen3's RMSNorms over ``head_dim`` on q and k (paths in the layer,
#: like the projections').
LAYER_NORMS, QK_NORMS = ("input_layernorm", "post_attention_layernorm"), ("self_attn.q_norm", "self_attn.k_norm")
#: Where the head-dim hooks act (:func:`~lightning_prune.adapters.head_dims.install_head_dim_hooks`): ``qk_dims`` on the
#: outputs of the projections whose rows are q/k dims (before RoPE; at :data:`QK_NORMS` instead when the model has
#: them), ``v_dims`` at the input of the projection whose columns are every query head's value dims.
QK_OUTPUTS = tuple(p.path for p in LLAMA_LAYER if p.out.dims == "qk_dims")
V_INPUT = next(p.path for p in LLAMA_LAYER if p.inp.dims == "v_dims")
#: Dims of a head per unit: a RoPE pair (``rotate_half`` mixes dim ``i`` with ``i + head_dim/2``), a value dim.
DIMS_PER_UNIT = {"qk_dims": 2, "v_dims": 1}


def block_output(block: str) -> Projection:
    """The projection of ``block`` writing the residual stream (``o_proj``, ``down_proj``)."""
    return next(p for p in LLAMA_LAYER if p.block == block and p.out == HIDDEN)


def layer_projections(fused_parts: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The module paths of a layer's projections in order, a fused projection in place of the parts it stacks."""
    home = {part: fused for fused, parts in fused_parts.items() for part in parts}
    return tuple(dict.fromkeys(home.get(p.path, p.path) for p in LLAMA_LAYER))


def head_count(adapter: LlamaAdapter, axis: Axis) -> int:
    """Heads along a ``heads`` axis: every query head, or one per KV group."""
    return adapter.num_heads if axis.query else adapter.num_kv_heads


def unit_width(adapter: LlamaAdapter, axis: Axis) -> int:
    """Rows (or columns) per unit: ``n_rep · head_dim`` for query heads, ``head_dim`` for a KV head, else 1."""
    return (adapter.n_rep if axis.query else 1) * adapter.head_dim if axis.structure == "heads" else 1


def axis_size(adapter: LlamaAdapter, axis: Axis) -> int:
    """The full length of the axis."""
    if axis.structure == "heads":
        return head_count(adapter, axis) * adapter.head_dim
    return adapter.hidden_size if axis.structure == "hidden" else adapter.intermediate_size


def stacked_rows(adapter: LlamaAdapter, parts: tuple[str, ...]) -> tuple[int, str]:
    """The rows of a projection that stacks the table's projections ``parts`` (one: the projection itself), and how
    the config gives them (``"(num_attention_heads + 2*num_key_value_heads)*head_dim"``), for the attach check.
    The parts are all ``heads`` rows (q, k, v) or all not (gate, up)."""
    axes = [next(p.out for p in LLAMA_LAYER if p.path == part) for part in parts]
    counts = Counter(_config_field(axis) for axis in axes)
    formula = " + ".join(field if n == 1 else f"{n}*{field}" for field, n in counts.items())
    if axes[0].structure == "heads":
        formula = f"({formula})*head_dim" if len(counts) > 1 else f"{formula}*head_dim"
    return sum(axis_size(adapter, axis) for axis in axes), formula


def _config_field(axis: Axis) -> str:
    """The config field that sets the axis's length (per head for a ``heads`` axis)."""
    if axis.structure == "heads":
        return "num_attention_heads" if axis.query else "num_key_value_heads"
    return "hidden_size" if axis == HIDDEN else "intermediate_size"


def fused_rows(adapter: LlamaAdapter) -> dict[str, tuple[tuple[str, int], ...]]:
    """``{fused path: ((part path, rows), ...)}``: the rows each part of a fused projection holds, in order."""
    rows = {p.path: axis_size(adapter, p.out) for p in LLAMA_LAYER}
    return {fused: tuple((part, rows[part]) for part in parts) for fused, parts in adapter.fused_parts.items()}


def axis_dim(adapter: LlamaAdapter, axis: Axis, layer: int) -> Dim:
    """The cost model's :class:`~lightning_prune.cost.Dim` of the axis in ``layer``: kept units × unit width (one
    ``hidden`` row for the whole model), a heads axis scaled by the kept fraction of every head's dims."""
    if axis.structure != "heads":
        return Dim(axis_size(adapter, axis), axis.structure, 0 if axis == HIDDEN else layer, 1)
    units = adapter.head_dim // DIMS_PER_UNIT[axis.dims]
    scaled_by = ((axis.dims, layer, units),)
    return Dim(axis_size(adapter, axis), "heads", layer, unit_width(adapter, axis), scaled_by=scaled_by)


def unit_ownership(adapter: LlamaAdapter, axis: Axis, structure: str) -> tuple[int, torch.Tensor | None] | None:
    """How ``structure``'s units own the axis (ATP's couplings): ``(rows per unit, None)`` when a unit owns
    consecutive rows; ``(rows per unit, unit of every row)`` for a head-dim structure, whose unit ``j`` recurs in
    every head; ``None`` when ``structure`` does not index the axis."""
    if axis.structure == structure:
        return unit_width(adapter, axis), None
    if axis.dims != structure:
        return None
    heads, hd = head_count(adapter, axis), adapter.head_dim
    within = pair_units(hd) if structure == "qk_dims" else torch.arange(hd)  # the unit of each dim of a head
    return heads * DIMS_PER_UNIT[structure], within.repeat(heads)


def kept_index(adapter: LlamaAdapter, axis: Axis, kept: dict[str, torch.Tensor]) -> torch.Tensor:
    """Indices of the axis's kept rows (or columns). ``kept``: one layer's kept units per structure (``heads``: KV
    groups; ``qk_dims``: a head's kept dims in compact order, :func:`~.head_dims.qk_dim_index`)."""
    if axis.structure != "heads":
        return kept[axis.structure]
    heads, rep = kept["heads"], adapter.n_rep
    if axis.query:  # the n_rep query heads of every kept group
        heads = (heads[:, None] * rep + torch.arange(rep, device=heads.device)).flatten()
    return (heads[:, None] * adapter.head_dim + kept[axis.dims]).flatten()


def dims_mask(adapter: LlamaAdapter, axis: Axis, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head-dim mask of a heads axis over its length (``masks``: one layer's rows; a pair's value on both dims)."""
    return masks[axis.dims].repeat(DIMS_PER_UNIT[axis.dims]).repeat(head_count(adapter, axis))


def folded(
    adapter: LlamaAdapter,
    proj: Projection,
    w: torch.Tensor,
    b: torch.Tensor | None,
    masks: dict[str, torch.Tensor],
    fold_qk: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``proj``'s weight and bias with the masks folded in once, where the hooks apply them (``masks``: one layer's
    row of every structure, ones when not gated, and its block gates).

    A projection writing the residual stream carries every unit mask of its input (heads × value dims, FFN channels)
    on its columns and its block gate × the hidden mask on its rows. ``qk_dims`` acts before ``q·k``, on the rows of
    q and k (``fold_qk``; not with Qwen3's q/k norms, where it is binary and only slices). Other masks only select.
    """
    if proj.out == HIDDEN:
        out_scale = (masks["hidden"] * masks[proj.gate]).to(w)
        inp = proj.inp
        in_scale = masks[inp.structure]
        if inp.structure == "heads":
            in_scale = in_scale.repeat_interleave(unit_width(adapter, inp)) * dims_mask(adapter, inp, masks)
        w = w * in_scale.to(w)[None, :] * out_scale[:, None]
        return w, None if b is None else b * out_scale
    if fold_qk and proj.out.dims == "qk_dims":
        row_scale = dims_mask(adapter, proj.out, masks).to(w)
        return w * row_scale[:, None], None if b is None else b * row_scale
    return w, b
