"""Cost model: exact and expected parameter / FLOP counts as a function of kept units.

Each weight of a model is described by a :class:`CostTerm`: an output and an input :class:`Dim`, each
either a fixed size or ``unit_size`` × (kept units of one structure row), times optional scalar block
gates. The same terms give

* the **exact** count of the compact model when evaluated on binary masks, and
* the **differentiable expected** count under the gates when evaluated on keep probabilities.

Gates of different structures are independent, so the expectation of a product is the product of
expectations (the "coarse × fine × hidden" products of CoFi, Xia et al. 2022, §3.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Dim:
    """One dimension of a weight.

    Attributes:
        size: full size of the dimension.
        structure: name of the structure that controls it, or ``None`` for a fixed dimension.
        row: the structure row (layer) that controls it.
        unit_size: dims per unit (e.g. ``n_rep · head_dim`` query rows per KV group).
        scaled_by: ``(structure, row, units)`` of further structures that each keep a fraction of this dimension
            (the product of two per-layer structures, e.g. query rows = kept KV groups × ``n_rep`` × kept head
            dims): the kept size is multiplied by ``Σ row / units`` for every such structure that is gated.
        units: only these units of the row control the dimension (``None``: the whole row). A traced CNN has one
            row of every gated channel; a conv's output channels are a subset of it, so one term per weight (not
            one per channel pair) describes the conv.
    """

    size: int
    structure: str | None = None
    row: int = 0
    unit_size: int = 1
    scaled_by: tuple[tuple[str, int, int], ...] = ()
    units: tuple[int, ...] | None = None

    def kept(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        if self.structure is None or self.structure not in values:
            kept: torch.Tensor | float = float(self.size)
        elif self.units is not None:
            kept = values[self.structure][self.row][list(self.units)].sum() * self.unit_size
        else:
            kept = values[self.structure][self.row].sum() * self.unit_size
        for structure, row, units in self.scaled_by:
            if structure in values:  # multiply first: an integer count stays exact in float64
                kept = kept * values[structure][row].sum() / units
        return kept


@dataclass(frozen=True)
class CostTerm:
    """A weight (and optional bias) whose size is ``out × in × Π(scalar gates)``.

    Attributes:
        name: a readable name (``"layers.3.mlp.down_proj"``) for reports.
        out: the output dimension.
        inp: the input dimension (``Dim(1)`` for vectors such as norm weights).
        scalars: ``(structure, row, unit)`` triples of scalar gates (whole blocks) that multiply the term.
        bias: whether a bias of size ``out`` goes with the weight.
        prunable: whether the term counts towards ``target_sparsity`` (see :class:`CostModel`).
        params: whether the term holds parameters (attention score FLOPs do not).
        flops_per_param: FLOPs per token per ``out × in`` element (2 for a matmul, 0 for a lookup).
    """

    name: str
    out: Dim
    inp: Dim = field(default_factory=lambda: Dim(1))
    scalars: tuple[tuple[str, int, int], ...] = ()
    bias: bool = False
    prunable: bool = False
    params: bool = True
    flops_per_param: float = 0.0

    def _factor(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        factor: torch.Tensor | float = 1.0
        for structure, row, unit in self.scalars:
            if structure in values:
                factor = factor * values[structure][row, unit]
        return factor

    def count(self, values: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(params, flops_per_token)`` of this term under ``values`` (masks or keep probabilities)."""
        out = self.out.kept(values)
        inp = self.inp.kept(values)
        factor = self._factor(values)
        n = out * inp * factor
        params = (n + (out * factor if self.bias else 0.0)) if self.params else 0.0
        return params, n * self.flops_per_param


class CostModel:
    """Parameter and FLOP counts of a model as a function of its kept units.

    *Prunable parameters* are the terms marked ``prunable`` by the adapter: for transformer adapters,
    every weight and bias of the attention projections and of the MLP in every layer. Embeddings, the
    LM head and norm weights are not prunable parameters (they shrink with ``hidden`` and are counted in
    the totals), so ``target_sparsity`` means the same thing whatever structures are gated.

    Args:
        terms: the adapter's cost terms.
    """

    def __init__(self, terms: list[CostTerm]) -> None:
        if not terms:
            raise ValueError("A cost model needs at least one term.")
        self.terms = terms
        self._layouts: dict[tuple, dict[str, Any]] = {}
        dense_p, dense_f = self._sum({}, prunable_only=True)
        self.dense_prunable_params = float(dense_p)
        self.dense_prunable_flops = float(dense_f)
        total_p, total_f = self._sum({}, prunable_only=False)
        self.dense_params = float(total_p)
        self.dense_flops = float(total_f)

    def _layout(self, shapes: tuple[tuple[str, tuple[int, ...]], ...], device: torch.device) -> dict[str, Any]:
        """Index tensors that evaluate every term at once for values of the given structures and shapes.

        Per-row sums of all structures are concatenated into one vector ``S`` (``S[0] = 1``) and all values
        into ``V`` (``V[0] = 1``); a term's kept output dims are ``S[out_index] · out_scale`` (a fixed dim points
        at ``S[0]`` with its size as the scale), times ``Π S[*_extra_index] / *_extra_div`` for the structures
        that scale it (:attr:`Dim.scaled_by`), and its block-gate factor ``Π V[scalar_index]``.
        """
        key = (shapes, str(device))
        if key in self._layouts:
            return self._layouts[key]
        row_offset, flat_offset, units = {}, {}, {}
        rows_seen, flat_seen = 1, 1
        for name, shape in shapes:
            rows = shape[0] if len(shape) > 1 else 1
            row_offset[name], flat_offset[name], units[name] = rows_seen, flat_seen, shape[-1]
            rows_seen += rows
            flat_seen += int(torch.Size(shape).numel())

        # a dim over a subset of a row's units reads S at rows_seen + its subset's index (subset sums follow the rows)
        subset_ids: dict[tuple, int] = {}
        subset_value_index: list[int] = []
        subset_of_value: list[int] = []

        def dim_index(dim: Dim) -> tuple[int, float]:
            if dim.structure is None or dim.structure not in row_offset:
                return 0, float(dim.size)
            if dim.units is None:
                return row_offset[dim.structure] + dim.row, float(dim.unit_size)
            key = (dim.structure, dim.row, dim.units)
            if key not in subset_ids:
                subset_ids[key] = len(subset_ids)
                base = flat_offset[dim.structure] + dim.row * units[dim.structure]
                subset_value_index.extend(base + u for u in dim.units)
                subset_of_value.extend([subset_ids[key]] * len(dim.units))
            return rows_seen + subset_ids[key], float(dim.unit_size)

        def extra(dim: Dim, width: int) -> tuple[list[int], float]:
            gated = [(st, row, n) for st, row, n in dim.scaled_by if st in row_offset]
            idx = [row_offset[st] + row for st, row, _ in gated]
            div = 1.0
            for _, _, n in gated:
                div *= n
            return idx + [0] * (width - len(idx)), div  # padding points at S[0] = 1

        width = max(1, max(len(t.scalars) for t in self.terms))
        extra_width = max(1, max(max(len(t.out.scaled_by), len(t.inp.scaled_by)) for t in self.terms))
        # per side of a term (its output and input dims): index, scale, extra index and extra divisor of every term
        sides: dict[str, tuple[list, list, list, list]] = {"out": ([], [], [], []), "in": ([], [], [], [])}
        scal = []
        for term in self.terms:
            for side, dim in (("out", term.out), ("in", term.inp)):
                i, scale = dim_index(dim)
                idx, div = extra(dim, extra_width)
                for column, value in zip(sides[side], (i, scale, idx, div)):
                    column.append(value)
            idx = [flat_offset[st] + row * units[st] + unit for st, row, unit in term.scalars if st in flat_offset]
            scal.append(idx + [0] * (width - len(idx)))

        def tensor(values, dtype=torch.float64):
            return torch.tensor(values, dtype=dtype, device=device)

        layout: dict[str, Any] = {}
        kinds = (
            ("index", torch.long),
            ("scale", torch.float64),
            ("extra_index", torch.long),
            ("extra_div", torch.float64),
        )
        for side, columns in sides.items():
            for (name, dtype), values in zip(kinds, columns):
                layout[f"{side}_{name}"] = tensor(values, dtype)
        layout |= {
            "scalar_index": tensor(scal, torch.long),
            "bias": tensor([float(t.bias) for t in self.terms]),
            "params": tensor([float(t.params) for t in self.terms]),
            "flops": tensor([t.flops_per_param for t in self.terms]),
            "prunable": tensor([t.prunable for t in self.terms], torch.bool),
            "subset_value_index": tensor(subset_value_index, torch.long),
            "subset_of_value": tensor(subset_of_value, torch.long),
            "subsets": len(subset_ids),
        }
        self._layouts[key] = layout
        return layout

    def _sum(self, values: Mapping[str, torch.Tensor], prunable_only: bool):
        """``(params, flops)`` summed over the terms, vectorised: a handful of tensor ops whatever the model
        size (the penalty runs every training step)."""
        # float64: counts of billions of parameters must be exact (float32 is exact only up to 2**24)
        names = sorted(values)
        device = values[names[0]].device if names else torch.device("cpu")
        layout = self._layout(tuple((n, tuple(values[n].shape)) for n in names), device)
        one = torch.ones(1, dtype=torch.float64, device=device)
        flat = [values[n].double() for n in names]
        row_sums = torch.cat([one] + [v.sum(-1).reshape(-1) for v in flat])
        all_values = torch.cat([one] + [v.reshape(-1) for v in flat])
        if layout["subsets"]:
            subset_sums = torch.zeros(layout["subsets"], dtype=torch.float64, device=device).index_add(
                0, layout["subset_of_value"], all_values[layout["subset_value_index"]]
            )
            row_sums = torch.cat([row_sums, subset_sums])

        def kept(side: str) -> torch.Tensor:  # the kept dims of every term's output or input side
            dims = row_sums[layout[f"{side}_index"]] * layout[f"{side}_scale"]
            return dims * row_sums[layout[f"{side}_extra_index"]].prod(-1) / layout[f"{side}_extra_div"]

        out, inp = kept("out"), kept("in")
        factor = all_values[layout["scalar_index"]].prod(-1)
        n = out * inp * factor
        params = (n + layout["bias"] * out * factor) * layout["params"]
        flops = n * layout["flops"]
        if prunable_only:
            keep = layout["prunable"]
            params, flops = params[keep], flops[keep]
        return params.sum(), flops.sum()

    def prunable(self, values: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Kept prunable ``(params, flops)`` under masks or keep probabilities."""
        return self._sum(values, prunable_only=True)

    def total(self, values: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Kept ``(params, flops)`` of the whole model under masks or keep probabilities."""
        return self._sum(values, prunable_only=False)

    def sparsity(self, values: Mapping[str, torch.Tensor], target: str = "params") -> torch.Tensor:
        """Fraction of prunable parameters (or FLOPs) removed: ``1 − kept / dense``."""
        params, flops = self.prunable(values)
        if target == "params":
            return (1.0 - torch.as_tensor(params) / self.dense_prunable_params).float()
        return (1.0 - torch.as_tensor(flops) / self.dense_prunable_flops).float()
