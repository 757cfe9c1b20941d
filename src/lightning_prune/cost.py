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

import torch


@dataclass(frozen=True)
class Dim:
    """One dimension of a weight.

    Attributes:
        size: full size of the dimension.
        structure: name of the structure that controls it, or ``None`` for a fixed dimension.
        row: the structure row (layer) that controls it.
        unit_size: dims per unit (e.g. ``n_rep · head_dim`` query rows per KV group).
    """

    size: int
    structure: str | None = None
    row: int = 0
    unit_size: int = 1

    def kept(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        if self.structure is None or self.structure not in values:
            return float(self.size)
        return values[self.structure][self.row].sum() * self.unit_size


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
        dense_p, dense_f = self._sum({}, prunable_only=True)
        self.dense_prunable_params = float(dense_p)
        self.dense_prunable_flops = float(dense_f)
        total_p, total_f = self._sum({}, prunable_only=False)
        self.dense_params = float(total_p)
        self.dense_flops = float(total_f)

    def _sum(self, values: Mapping[str, torch.Tensor], prunable_only: bool):
        # float64: counts of billions of parameters must be exact (float32 is exact only up to 2**24)
        values = {k: v.double() for k, v in values.items()}
        params: torch.Tensor | float = 0.0
        flops: torch.Tensor | float = 0.0
        for term in self.terms:
            if prunable_only and not term.prunable:
                continue
            p, f = term.count(values)
            params = params + p
            flops = flops + f
        return params, flops

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
