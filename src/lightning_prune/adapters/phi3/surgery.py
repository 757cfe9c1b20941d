"""Phi-3's export: the Llama surgery on an unfused view of the merged weights, then the slices fused back.

``qkv_proj`` stacks the rows of Llama's ``q_proj``, ``k_proj`` and ``v_proj`` (all query heads, then the key heads,
then the value heads) and ``gate_up_proj`` those of ``gate_proj`` and ``up_proj``. :class:`UnfusedWeights` shows the
merged state dict (LoRA already folded into the fused weight) under the Llama names, so
:func:`~lightning_prune.adapters.llama.surgery.slice_llama_weights` keeps the same rows of every part; the kept rows
of the parts are then stacked again in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.llama.layout import fused_rows
from lightning_prune.adapters.llama.surgery import assemble_llama_compact, slice_llama_weights

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.phi3.adapter import Phi3Adapter


class UnfusedWeights(Mapping[str, torch.Tensor]):
    """``state`` with every fused projection's weight (and bias) shown as its parts' row slices.

    A fused tensor is read once for all its parts (the last one read is kept: a merged LoRA weight is computed
    once, and no more than one full-size fused tensor is held).

    Args:
        state: the merged weights (a state-dict mapping).
        parts: ``{fused path in a layer: ((part path, rows), ...)}``
            (:func:`~lightning_prune.adapters.llama.layout.fused_rows`).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], parts: dict[str, tuple[tuple[str, int], ...]]) -> None:
        self.state = state
        self.slices: dict[str, tuple[str, int, int]] = {}  # part key -> (fused key, first row, end row)
        self.groups: dict[str, list[str]] = {}  # fused key -> its part keys, in row order
        for key in state:
            for fused, pieces in parts.items():
                for tensor in ("weight", "bias"):
                    if not key.endswith(f".{fused}.{tensor}"):
                        continue
                    stem, start = key[: -len(f"{fused}.{tensor}")], 0
                    for part, rows in pieces:
                        self.slices[f"{stem}{part}.{tensor}"] = (key, start, start + rows)
                        self.groups.setdefault(key, []).append(f"{stem}{part}.{tensor}")
                        start += rows
        self._last: tuple[str | None, torch.Tensor | None] = (None, None)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.groups:
            raise KeyError(f"{key} is shown as its parts {self.groups[key]}")
        if key not in self.slices:
            return self.state[key]
        fused, start, end = self.slices[key]
        if self._last[0] != fused:
            self._last = (fused, self.state[fused])
        return self._last[1][start:end]

    def __iter__(self) -> Iterator[str]:
        for key in self.state:
            yield from self.groups.get(key, (key,))

    def __len__(self) -> int:
        return sum(len(self.groups.get(key, (key,))) for key in self.state)

    def fuse_(self, new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stack the compact parts in ``new`` back into their fused keys, in place. A block the export emptied has
        none of its parts left, and gets no fused tensor."""
        for fused, keys in self.groups.items():
            present = [k for k in keys if k in new]
            if present and len(present) != len(keys):
                lost = sorted(set(keys) - set(present))
                raise RuntimeError(f"Internal error: {fused} lost some of its parts {lost}.")
            if present:
                new[fused] = torch.cat([new.pop(k) for k in keys])
        return new


def build_phi3_compact(
    adapter: Phi3Adapter, state: Mapping[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    unfused = UnfusedWeights(state, fused_rows(adapter))
    sliced = slice_llama_weights(adapter, unfused, masks)
    unfused.fuse_(sliced.new)
    return assemble_llama_compact(adapter, state, sliced)
