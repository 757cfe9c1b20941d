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
from lightning_prune.adapters.llama.layout import LLAMA_LAYER, unit_ownership
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


#: The per-layer structures ATP couples to the Llama layout (``hidden`` has one row for the whole model).
LLAMA_ATP_STRUCTURES = ("heads", "ffn", "qk_dims", "v_dims")


@register_atp_layout("llama")
def llama_layout(adapter: ModelAdapter, structure: str) -> list[Coupling]:
    """Llama/Mistral/Qwen: every projection side the layer table (:mod:`lightning_prune.adapters.llama.layout`)
    indexes by ``structure``. E.g. a ``heads`` unit (a KV group) owns ``n_rep·head_dim`` q rows, ``head_dim`` k and
    v rows and ``n_rep·head_dim`` o_proj columns; a ``qk_dims`` unit (a RoPE pair ``j``) owns q and k rows ``j`` and
    ``j + head_dim/2`` of every head."""
    if structure not in LLAMA_ATP_STRUCTURES:
        raise PruningConfigError(
            f"ATP's Llama layout has no structure {structure!r}; use 'heads', 'ffn', 'qk_dims' and/or 'v_dims'."
        )
    out: list[Coupling] = []
    for l, layer in enumerate(adapter.layers):
        for proj in LLAMA_LAYER:
            for side, axis in (("out", proj.out), ("in", proj.inp)):
                owned = unit_ownership(adapter, axis, structure)
                if owned is not None:
                    path = f"{adapter.prefix}layers.{l}.{proj.path}"
                    out.append(Coupling(path, layer.get_submodule(proj.path), side, l, *owned))
    return out
