"""Which projection rows and columns belong to each prunable unit: ATP's LoRA-aware view of a model.

ATP (Lu et al., arXiv 2412.14426) needs, per structure and layer, the projections whose *output rows* a unit
owns (the mask covers their frozen path ``W x`` in the LoRA update, and the group lasso acts on their LoRA
``B`` rows) and the projections whose *input columns* it owns (group lasso on their LoRA ``A`` columns).
A layout lists them as :class:`Coupling` s; one function per adapter, registered with
:func:`register_atp_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lightning_prune.adapters.base import ModelAdapter
from lightning_prune.adapters.head_dims import pair_units
from lightning_prune.errors import PruningConfigError
from lightning_prune.registry import Registry


@dataclass(frozen=True)
class Coupling:
    """One projection coupled to a structure row (layer).

    Attributes:
        path: module path inside the Hugging Face model (peft's wrapper when LoRA is applied).
        module: the module at ``path`` (a peft ``lora.Linear`` or a plain ``nn.Linear``).
        side: ``"out"``: a unit owns ``unit_size`` consecutive output rows; ``"in"``: input columns.
        layer: the structure row.
        unit_size: rows (or columns) per unit.
        unit_index: the unit of every row (or column) when a unit's rows are not consecutive (``qk_dims``: pair
            ``j`` owns dims ``j`` and ``j + head_dim/2`` of every head); ``None``: ``unit_size`` consecutive ones.
    """

    path: str
    module: nn.Module
    side: Literal["out", "in"]
    layer: int
    unit_size: int
    unit_index: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def expand(self, mask_row: torch.Tensor) -> torch.Tensor:
        """The unit mask of this row spread over the unit's rows/columns: ``(units · unit_size,)``."""
        if self.unit_index is not None:
            return mask_row[self.unit_index.to(mask_row.device)]
        return mask_row.repeat_interleave(self.unit_size)


Layout = Callable[[ModelAdapter, str], list[Coupling]]
#: ATP LoRA layouts by adapter name. Re-registering a name with another function raises.
LAYOUTS: Registry[Layout] = Registry(
    "ATP layout",
    "Register one with lightning_prune.methods.atp.register_atp_layout (see layout.py for Llama), or use L0Config "
    "for this model.",
)


def register_atp_layout(adapter_name: str) -> Callable[[Layout], Layout]:
    """Decorator registering ``fn(adapter, structure) -> list[Coupling]`` for the adapter ``adapter_name``."""

    def wrap(fn: Layout) -> Layout:
        return LAYOUTS.register(adapter_name, fn)

    return wrap


def couplings(adapter: ModelAdapter, structure: str) -> list[Coupling]:
    """The couplings of ``structure`` for ``adapter``; a clear error when the family has no ATP layout."""
    if adapter.name not in LAYOUTS:
        raise LAYOUTS.error(
            f"ATP does not know the LoRA layout of the {adapter.name!r} adapter (known: {sorted(LAYOUTS)}). "
            + LAYOUTS.hint
        )
    return LAYOUTS.get(adapter.name)(adapter, structure)


@register_atp_layout("llama")
def llama_layout(adapter: ModelAdapter, structure: str) -> list[Coupling]:
    """Llama/Mistral/Qwen: a ``heads`` unit (a KV group) owns ``n_rep·head_dim`` q rows, ``head_dim`` k and v
    rows and ``n_rep·head_dim`` o_proj columns; an ``ffn`` unit owns a gate and an up row and a down column; a
    ``qk_dims`` unit (a RoPE pair ``j``) owns q and k rows ``j`` and ``j + head_dim/2`` of every head; a ``v_dims``
    unit (dim ``j``) owns v row ``j`` of every KV head and o_proj column ``j`` of every query head."""
    p, hd, rep = adapter.prefix, adapter.head_dim, adapter.n_rep
    nh, nkv = adapter.num_heads, adapter.num_kv_heads
    pairs, dims = pair_units(hd), torch.arange(hd)
    out: list[Coupling] = []
    for l, layer in enumerate(adapter.layers):
        base = f"{p}layers.{l}."
        attn = layer.self_attn
        if structure == "heads":
            for name, side, size in (("q_proj", "out", rep * hd), ("k_proj", "out", hd), ("v_proj", "out", hd)):
                out.append(Coupling(f"{base}self_attn.{name}", getattr(attn, name), side, l, size))
            out.append(Coupling(f"{base}self_attn.o_proj", attn.o_proj, "in", l, rep * hd))
        elif structure == "ffn":
            mlp = layer.mlp
            for name in ("gate_proj", "up_proj"):
                out.append(Coupling(f"{base}mlp.{name}", getattr(mlp, name), "out", l, 1))
            out.append(Coupling(f"{base}mlp.down_proj", mlp.down_proj, "in", l, 1))
        elif structure == "qk_dims":
            for name, heads in (("q_proj", nh), ("k_proj", nkv)):
                out.append(
                    Coupling(f"{base}self_attn.{name}", getattr(attn, name), "out", l, 2 * heads, pairs.repeat(heads))
                )
        elif structure == "v_dims":
            out.append(Coupling(f"{base}self_attn.v_proj", attn.v_proj, "out", l, nkv, dims.repeat(nkv)))
            out.append(Coupling(f"{base}self_attn.o_proj", attn.o_proj, "in", l, nh, dims.repeat(nh)))
        else:
            raise PruningConfigError(
                f"ATP's Llama layout has no structure {structure!r}; use 'heads', 'ffn', 'qk_dims' and/or 'v_dims'."
            )
    return out
