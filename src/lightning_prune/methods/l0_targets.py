"""Targeted structured pruning: one Lagrangian term per structure towards a target architecture.

Sheared-LLaMA (Xia et al., "Sheared LLaMA: Accelerating Language Model Pre-training via Structured Pruning",
ICLR 2024, §2.1) replaces CoFi's single expected-size constraint by one constraint per structure: for a
structure ``m`` with ``N_m`` units per row and a target of ``k_m`` units, the per-row expected sparsity
``ŝ_m,r = 1 − E[kept_r] / N_m`` is pushed to ``t_m = 1 − k_m / N_m`` by

    L_m = mean_r [ λ1_m (ŝ_m,r − t_m(step)) + λ2_m (ŝ_m,r − t_m(step))² ],

with ``t_m(step)`` warmed up linearly from 0 (the dense model) and one pair of multipliers per structure,
maximised by the same gradient reversal as the global constraint. The deterministic masks then keep exactly
``k_m`` units in every row (``keep_units``), so the export has a uniform, standard config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_prune.constraint import LagrangianConstraint, linear_warmup
from lightning_prune.errors import PruningConfigError
from lightning_prune.structures import STRUCTURE_DOCS

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

#: Keys a user may mean but that the target architecture does not take, with the fix.
_ALIASES = {
    "query_heads": "`heads` counts key/value groups (the gate's unit), not query heads: give "
    "heads = query_heads / (num_attention_heads / num_key_value_heads)",
    "kv_heads": "use `heads` (it counts key/value groups)",
    "num_attention_heads": "use `heads` (it counts key/value groups)",
    "intermediate": "use `ffn` (FFN channels per layer)",
    "intermediate_size": "use `ffn` (FFN channels per layer)",
    "hidden_size": "use `hidden`",
    "d_model": "use `hidden`",
}


def validate_target_architecture(
    target_architecture: dict[str, int], structures: tuple[str, ...], keep_units: dict[str, int]
) -> None:
    """Check a target architecture against the config (names, types, conflicts); the model checks come at attach.

    Raises:
        PruningConfigError: an unknown or ungated structure name, a count that is not a positive int, a gated
            structure without a target, or a ``keep_units`` entry that disagrees with the target.
    """
    if not isinstance(target_architecture, dict) or not target_architecture:
        raise PruningConfigError(
            f"`target_architecture` must be a non-empty dict of units to keep per row, e.g. {{'heads': 2, 'ffn': 64}}, "
            f"got {target_architecture!r}."
        )
    for name, count in target_architecture.items():
        if name in _ALIASES:
            raise PruningConfigError(f"`target_architecture` has no structure {name!r}: {_ALIASES[name]}.")
        if name not in structures:
            if name in STRUCTURE_DOCS:
                raise PruningConfigError(
                    f"`target_architecture` names {name!r}, which is not in `structures` {structures}; add it there."
                )
            raise PruningConfigError(
                f"`target_architecture` names an unknown structure {name!r}. "
                f"Known structures: {sorted(STRUCTURE_DOCS)}."
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PruningConfigError(
                f"`target_architecture[{name!r}]` must be a positive int (units kept in every row), got {count!r}. "
                "HINT: to remove a structure entirely, drop it from the model instead of pruning it to 0."
            )
        if name in keep_units and keep_units[name] != count:
            raise PruningConfigError(
                f"Conflicting targets for {name!r}: `keep_units` says {keep_units[name]} but `target_architecture` "
                f"says {count}. Give the count once, in `target_architecture`."
            )
    missing = [s for s in structures if s not in target_architecture]
    if missing:
        example = ", ".join(f"{m!r}: ..." for m in missing)
        raise PruningConfigError(
            f"`target_architecture` has no count for the gated structure(s) {missing}: with a target architecture "
            f"every structure in `structures` needs a target. Add them (e.g. {{{example}}}) or remove them from "
            "`structures`."
        )


class TargetArchitectureRegularizer(nn.Module):
    """Per-structure Lagrangian towards fixed unit counts (Sheared-LLaMA, eq. 1 per mask type).

    Args:
        pruner: the pruner being built (its specs give ``N_m``; its cost model gives the derived sparsity).
        target_architecture: units to keep in every row, per structure (validated against the model here).
        warmup_steps: pruning steps over which each ``t_m`` rises linearly from 0.
        target: ``"params"`` or ``"flops"``: what the *reported* derived sparsity is a fraction of.

    Attributes:
        derived_sparsity: the exact sparsity of the target architecture (reported as the target by
            ``pruner.current_target()`` once the warm-up is over; ``target_sparsity`` is not used).
    """

    def __init__(self, pruner: Pruner, target_architecture: dict[str, int], warmup_steps: int, target: str) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.units: dict[str, int] = {}
        for name, count in target_architecture.items():
            spec = pruner.specs[name]
            if count > spec.units:
                gqa = (
                    f" `heads` counts key/value groups, and this model has {spec.units} (query heads per group: "
                    f"{getattr(pruner.adapter, 'n_rep', 1)})."
                    if name == "heads"
                    else ""
                )
                raise PruningConfigError(
                    f"`target_architecture[{name!r}]`={count} is larger than the model's {spec.units} units per row "
                    f"of {name!r}.{gqa} Choose at most {spec.units}."
                )
            self.units[name] = spec.units
        self.kept = dict(target_architecture)
        self.constraints = nn.ModuleDict({name: LagrangianConstraint() for name in target_architecture})
        masks = {
            name: (torch.arange(spec.units) < self.kept[name]).float().expand(spec.rows, spec.units)
            for name, spec in pruner.specs.items()
        }
        self.derived_sparsity = float(pruner.cost.sparsity(masks, target))

    def final_sparsity(self, name: str) -> float:
        """``t_m = 1 − k_m / N_m``: the fraction of each row of ``name`` to remove at the end of the warm-up."""
        return 1.0 - self.kept[name] / self.units[name]

    def structure_target(self, name: str, step: int) -> float:
        return linear_warmup(self.final_sparsity(name), step, self.warmup_steps)

    def current_target(self, step: int) -> float:
        """The overall sparsity the schedule stands at (for reporting; each structure has its own target)."""
        return linear_warmup(self.derived_sparsity, step, self.warmup_steps)

    def expected_counts(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        """Expected kept units per row, ``Σ P(z ≠ 0)``, per structure (shape ``(rows,)``)."""
        return {name: pruner.gates[name].expected_kept() for name in self.constraints}

    def forward(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        step = pruner.pruning_step
        terms: dict[str, torch.Tensor] = {}
        for name, constraint in self.constraints.items():
            expected = 1.0 - pruner.gates[name].expected_kept() / self.units[name]  # ŝ_m per row
            terms[f"lagrangian/{name}"] = constraint(expected, self.structure_target(name, step)).mean()
        return terms

    def multipliers(self) -> list[nn.Parameter]:
        return [p for c in self.constraints.values() for p in (c.lambda_1, c.lambda_2)]
