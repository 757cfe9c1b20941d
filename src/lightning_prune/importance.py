"""Importance-initialised gates: the learned search starts where one-shot pruning ends.

During the dense warm-up every gated unit carries a multiplicative mask ``m = 1`` that requires grad (the
adapters' hooks multiply by it as they multiply by gate samples later, so the dense forward is unchanged). For such a
mask the gradient ``∂L/∂m`` of a unit is ``Σ activation · grad`` over the unit: the structured first-order Taylor
term of Molchanov et al. 2019 ("Importance Estimation for Neural Network Pruning", CVPR, eq. 8 with a unit mask).
:class:`ImportanceScores` accumulates ``Σ_batches (∂L/∂m)²`` per unit, the empirical Fisher of the mask of Kwon
et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", NeurIPS, eq. 5): ``½·F`` estimates the
loss increase when the unit is removed. Only ``(rows, units)`` sums are kept (no per-token storage); the probe
masks are plain tensors made at each forward, never parameters, so they never enter an optimizer.

At the dense → prune transition :meth:`Pruner.init_gates_from_importance_` ranks every unit of every structure by
Fisher per unit of cost (the greedy knapsack order: the loss a unit's removal costs per prunable parameter or FLOP
it frees) and sets each gate's parameters from the rank (:meth:`Gate.init_from_ranks_`; hard-concrete:
``log α = init − spread · (1 − rank)``), so that the deterministic masks at any target are the one-shot Taylor
selection at that moment (:func:`importance_masks`) and training only moves on from it.

Example (plain API)::

    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, init_from_importance=True))
    pruner.set_phase("dense")                    # probe masks: Fisher accumulates in every training backward
    for batch in warmup_batches:
        (model(**batch).loss).backward(); optimizer.step(); optimizer.zero_grad()
    pruner.set_phase("prune")                    # leaving the dense phase initialises the gates from the scores
    # (or explicitly, e.g. after a custom warm-up: pruner.init_gates_from_importance_())
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_prune.selection import select_masks, top_k_masks
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

log = logging.getLogger("lightning_prune")


class ImportanceScores(nn.Module):
    """Per-unit Fisher sums ``Σ_batches (∂L/∂m)²`` of every gated structure, as buffers (checkpointed with the model).

    Args:
        specs: the gated structures, ``{name: spec}``; one ``(rows, units)`` buffer each.

    Buffers:
        ``fisher_<name>``: the sums (fp32). ``batches``: training backwards seen. ``applied``: 1 once the gates were
        initialised from the scores (a resumed run never initialises twice).
    """

    def __init__(self, specs: Mapping[str, StructureSpec]) -> None:
        super().__init__()
        self.names = tuple(specs)
        for name, spec in specs.items():
            self.register_buffer(f"fisher_{name}", torch.zeros(spec.rows, spec.units))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("applied", torch.zeros((), dtype=torch.long))

    def fisher(self, name: str) -> torch.Tensor:
        return getattr(self, f"fisher_{name}")

    @property
    def done(self) -> bool:
        return bool(self.applied)

    def probe_masks(self) -> dict[str, torch.Tensor]:
        """All-ones masks that require grad; their gradient is added, squared, to the sums in the backward pass.

        A fresh set per forward: each micro-batch's gradient is squared on its own (Fisher of the batch gradient).
        """
        self.batches.add_(1)
        masks = {}
        for name in self.names:
            buf = self.fisher(name)
            m = torch.ones_like(buf, requires_grad=True)
            m.register_hook(_accumulate_into(buf))
            masks[name] = m
        return masks

    def reset_(self) -> None:
        for name in self.names:
            self.fisher(name).zero_()
        self.batches.zero_()
        self.applied.zero_()

    def synced(self) -> dict[str, torch.Tensor]:
        """The sums, added over ranks when ``torch.distributed`` runs (the probe masks are not parameters: DDP does
        not all-reduce their gradients)."""
        out = {name: self.fisher(name).clone() for name in self.names}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in out.values():
                torch.distributed.all_reduce(t)
        return out


def _accumulate_into(buf: torch.Tensor):
    def hook(grad: torch.Tensor) -> None:
        buf.add_(grad.detach().float().pow(2))

    return hook


def unit_costs(pruner: Pruner) -> dict[str, torch.Tensor]:
    """What removing one unit frees, per structure ``(rows, units)``: the derivative of the kept prunable size
    (params, or FLOPs with ``target="flops"``) at the dense model."""
    index = 1 if pruner.config.target == "flops" else 0
    ones = {n: torch.ones(s.rows, s.units, dtype=torch.float64, requires_grad=True) for n, s in pruner.specs.items()}
    with torch.enable_grad():
        kept = pruner.cost.prunable(ones)[index]
        grads = torch.autograd.grad(kept, list(ones.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(ones[n])).detach() for n, g in zip(ones, grads)}


def importance_per_cost(
    fisher: Mapping[str, torch.Tensor], costs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fisher per unit of cost (``float64``); a unit that frees nothing is never worth removing (``+inf``)."""
    out = {}
    for name, f in fisher.items():
        c = costs[name].to(torch.float64)
        out[name] = torch.where(c > 0, f.double().cpu() / c.clamp(min=1e-30), torch.full_like(c, float("inf")))
    return out


def global_ranks(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each unit's rank among all units of all structures, scaled to ``[0, 1]`` (0: least important; ties by
    structure order, then row-major index)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    order = torch.argsort(flat, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    rank = rank.double() / max(order.numel() - 1, 1)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = rank[start : start + s.numel()].view_as(s).float()
        start += s.numel()
    return out


def importance_masks(pruner: Pruner, target: float | None = None) -> dict[str, torch.Tensor]:
    """The one-shot Taylor/Fisher selection at ``target`` (default: the pruner's current target): starting from the
    dense model, the units with the least Fisher per unit of cost are removed until the exact sparsity meets the
    target (the pruner's own selection, :func:`~lightning_prune.selection.select_masks`, with ``uniform``,
    ``multiple_of`` and ``keep_units`` as configured). Deterministic masks right after
    :meth:`Pruner.init_gates_from_importance_` are these."""
    if pruner.importance is None:
        raise RuntimeError("This pruner accumulates no importance scores (`init_from_importance=False`).")
    scores = importance_per_cost(pruner.importance.synced(), unit_costs(pruner))
    cfg = pruner.config
    start = {}
    for name, spec in pruner.specs.items():
        counts = torch.full((spec.rows,), cfg.keep_units.get(name, spec.units), dtype=torch.long)
        start[name] = top_k_masks(scores[name], counts).float()
    masks = select_masks(
        start,
        {n: s.float() for n, s in scores.items()},
        pruner.specs,
        pruner.cost,
        pruner.current_target() if target is None else target,
        metric=cfg.target,
        match_target=cfg.match_target,
        uniform=cfg.uniform,
        multiple_of=cfg.multiple_of,
        fixed=set(cfg.keep_units),
    )
    return masks
