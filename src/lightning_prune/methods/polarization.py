"""Polarization pruning: continuous scale gates pushed to 0 or to their maximum by a concave regulariser.

Zhuang et al., "Neuron-level Structured Pruning using Polarization Regularizer", NeurIPS 2020, eq. 2::

    R(γ) = t·‖γ‖₁ − ‖γ − γ̄·1‖₁,     γᵢ ∈ [0, a],   loss = task + λ·R(γ)

with γ̄ the mean over *all* gated units of the network (the gradient flows through it in the reference
code). Theorem 3.2: the minimiser of R alone sets a fraction ``ρ = 1/2 − t/4`` (|t| ≤ 2) of the γ to ``a`` and
the rest to 0, so ``t`` sets how many units survive; the task loss decides *which* ones. The gates are
:class:`~lightning_prune.gates.scale.ScaleGate`: clamped to ``[0, 1]`` after every step, no weight decay,
binary decision by per-layer histogram valley (paper §3.3) or by the size target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.base import PruningConfig, register_method
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

MEANS = ("global", "layer", "detached")
DECISIONS = ("valley", "target")


def t_for_sparsity(unit_sparsity: float) -> float:
    """``t`` whose regulariser minimiser prunes ``unit_sparsity`` of the units: Theorem 3.2 gives the kept
    fraction ``ρ = 1/2 − t/4``, so ``t = 2 − 4ρ = 4·s − 2``."""
    return 4.0 * unit_sparsity - 2.0


def polarization_terms(
    gammas: list[torch.Tensor], t: float, mean: str = "global", weights: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """``Σᵢ wᵢ·(t·|γᵢ| − |γᵢ − γ̄|)`` over the units of all ``gammas`` (each ``(rows, units)``).

    Args:
        gammas: the scale values of every gated structure.
        t: the shrinkage coefficient of eq. 2.
        mean: ``"global"``: γ̄ is the mean over all units of all structures, with gradient through it (the
            paper and ``cifar/main.py``); ``"layer"``: one mean per row (``imagenet/main.py --layerwise``);
            ``"detached"``: the global mean as a constant (the reference's variant without gradient through
            the mean), so each γ gets exactly ``t·sign(γ) − sign(γ − γ̄)``.
        weights: optional per-unit weights shaped like ``gammas`` (1 when omitted).
    """
    if mean not in MEANS:
        raise ValueError(f"`mean` must be one of {MEANS}, got {mean!r}.")
    total_mean = torch.cat([g.reshape(-1) for g in gammas]).mean()
    if mean == "detached":
        total_mean = total_mean.detach()
    out = gammas[0].new_zeros(())
    for i, g in enumerate(gammas):
        centre = g.mean(dim=-1, keepdim=True) if mean == "layer" else total_mean
        term = t * g.abs() - (g - centre).abs()
        if weights is not None:
            term = term * weights[i].to(term)
        out = out + term.sum()
    return out


def marginal_unit_costs(pruner: Pruner, target: str) -> dict[str, torch.Tensor]:
    """Per-unit marginal cost (parameters or FLOPs removed by dropping that unit alone from the dense model),
    normalised to mean 1 over all gated units: the ``--flops-weighted`` option, from the cost model."""
    ones = {
        name: torch.ones(spec.rows, spec.units, dtype=torch.float64, requires_grad=True)
        for name, spec in pruner.specs.items()
    }
    params, flops = pruner.cost.prunable(ones)
    kept = flops if target == "flops" else params
    grads = torch.autograd.grad(kept, list(ones.values()), allow_unused=True)
    costs = {name: (g if g is not None else torch.zeros_like(v)).detach() for (name, v), g in zip(ones.items(), grads)}
    scale = torch.cat([c.reshape(-1) for c in costs.values()]).mean()
    if not scale > 0:
        return {name: torch.ones_like(c, dtype=torch.float32) for name, c in costs.items()}
    return {name: (c / scale).float() for name, c in costs.items()}


class PolarizationRegularizer(nn.Module):
    """``λ·R(γ)`` of eq. 2 as the penalty term ``"polarization"``."""

    def __init__(self, reg_lambda: float, t: float, mean: str, weights: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.reg_lambda = reg_lambda
        self.t = t
        self.mean = mean
        self.weight_names = sorted(weights) if weights is not None else None
        for name, w in (weights or {}).items():
            self.register_buffer(f"weight_{name}", w, persistent=False)

    def forward(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        names = sorted(pruner.gates)
        gammas = [pruner.gates[n].gamma.float() for n in names]
        weights = [getattr(self, f"weight_{n}") for n in names] if self.weight_names is not None else None
        return {"polarization": self.reg_lambda * polarization_terms(gammas, self.t, self.mean, weights)}


@register_method("polarization")
@dataclass
class PolarizationConfig(PruningConfig):
    """Polarization regulariser on continuous scale gates (Zhuang et al., NeurIPS 2020).

    Args (in addition to :class:`~lightning_prune.PruningConfig`):
        reg_lambda: λ, the weight of ``R(γ)`` (``--lbd``; 1e-4 in the reference code, 5e-5 for CIFAR ResNet-56,
            8e-5 for ImageNet ResNet-50). The penalty is a *sum* over units, so scale λ down for many units.
        t: the shrinkage coefficient (``--t``; the recipes use 1.0 to 1.5). ``None`` derives it from
            ``target_sparsity`` by Theorem 3.2 as ``4·s − 2``, read as a fraction of *units*: the regulariser
            alone would then prune that fraction; the task loss usually keeps more, and the paper tunes ``t``
            and λ by search (Alg. 1) to hit a FLOPs budget.
        mean: ``"global"`` (γ̄ over all gated units, gradient through it: the paper), ``"layer"`` (per-row mean)
            or ``"detached"`` (global mean, no gradient through it).
        cost_weighted: weight each unit's term by its marginal cost (parameters or FLOPs, per ``target``),
            normalised to mean 1: the reference code's ``--flops-weighted``, which pushes costly units harder.
        init_value: initial γ (1.0: the paper's ``SparseGate``, the unpruned function of a pretrained model).
        decision: ``"valley"``: per-row histogram valley (paper §3.3), at least one unit kept per row;
            ``"target"``: a global cut by γ that meets ``target_sparsity`` exactly (the pruner's exact-target
            machinery, as Network Slimming's percentile). ``match_target`` follows it (False / True).

    ``hidden`` cannot be polarization-gated: a hidden dim's scale would have to be folded through every residual
    write and RMSNorm, and the adapters need a binary hidden mask at export; gate it with :class:`L0Config`.

    Example::

        cfg = lightning_prune.PolarizationConfig(structures=("heads", "ffn"), reg_lambda=1e-4, t=1.2)
        pruner = lightning_prune.attach(model, cfg)
    """

    reg_lambda: float = 1e-4
    t: float | None = None
    mean: str = "global"
    cost_weighted: bool = False
    init_value: float = 1.0
    decision: str = "valley"
    match_target: bool | None = None  # type: ignore[assignment]  # follows `decision` unless set
    gate_lr: float = 0.01

    gate_kind = "scale"
    #: ``match_target`` follows ``decision``, after attach too.
    live_fields: ClassVar[tuple[str, ...]] = ("export_rtol",)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise PruningConfigError(
                f"`decision` must be one of {DECISIONS}, got {self.decision!r}. HINT: 'valley' cuts each layer at its "
                "histogram valley; 'target' cuts globally to meet `target_sparsity` exactly."
            )
        wanted = self.decision == "target"
        if self.match_target is None:
            self.match_target = wanted
        elif bool(self.match_target) != wanted:
            raise PruningConfigError(
                f"`match_target`={self.match_target!r} contradicts `decision`={self.decision!r}: 'valley' keeps the "
                "units above each layer's valley, 'target' meets the size target. Leave `match_target` unset."
            )
        super().__post_init__()
        lam = self.reg_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
            raise PruningConfigError(
                f"`reg_lambda` must be a positive number (the weight λ of the polarization regulariser), got {lam!r}. "
                "HINT: the paper uses 1e-4 (5e-5 to 8e-5 in its recipes)."
            )
        if self.t is None:
            self.t = t_for_sparsity(self.target_sparsity)
        t = self.t
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not -2.0 <= t <= 2.0:
            raise PruningConfigError(
                f"`t` must be a number in [-2, 2], got {t!r}: above 2 the regulariser prunes every unit, below -2 none "
                "(Theorem 3.2). HINT: the paper's recipes use 1.0 to 1.5; leave it unset to derive it from "
                "`target_sparsity`."
            )
        if self.mean not in MEANS:
            raise PruningConfigError(f"`mean` must be one of {MEANS}, got {self.mean!r}.")
        v = self.init_value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
            raise PruningConfigError(f"`init_value` must be in (0, 1] (γ is clamped to [0, 1]), got {v!r}.")
        if "hidden" in self.structures:
            raise PruningConfigError(
                "Polarization cannot gate `hidden`: continuous hidden-dim scales cannot be folded through the "
                "residual stream and its norms (RMSNorm, LayerNorm) at export (the hidden mask must be binary). "
                "Remove 'hidden' from `structures` or use L0Config for it."
            )

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {"init_value": self.init_value, "clamp_max": 1.0, "decision": self.decision}

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        weights = marginal_unit_costs(pruner, self.target) if self.cost_weighted else None
        return PolarizationRegularizer(self.reg_lambda, float(self.t), self.mean, weights)
