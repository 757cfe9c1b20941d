"""Mask selection: from gate scores and learned counts to the binary masks that meet a size target exactly.

Deterministic (eval / export) masks start from the gates' learned per-row counts, ``round(Σ P(kept))``, the
expected-count masks of CoFi (Xia et al. 2022, §3.3) and Sheared-LLaMA (Xia et al. 2024, §2.1). Those counts
miss the target: a closed hard-concrete gate still has ``P(kept) ≈ 0.05`` (phantom units), and when structures
multiply each other (``hidden`` × ``heads`` × ``ffn``, whole blocks × their channels) the product of rounded
counts lands off the expected size. :func:`select_masks` corrects them so the **exact** prunable sparsity of
the result (:class:`~lightning_prune.cost.CostModel` on binary masks) is at least the target and as close to it
as the units allow:

1. **Trim** (the learned masks keep too much): every kept *candidate* (a unit; with ``uniform=True`` a slice, one
   unit in every layer; with ``multiple_of`` a group of ``step`` units of a row) is ordered once by score, lowest
   first. Removing units never increases the kept cost, so the shortest prefix that meets the target is found by
   bisection: ``O(log N)`` vectorised cost evaluations instead of one mask per unit.
2. **Fill**: the last candidate removed usually overshoots (a ``hidden`` dim weighs as much as hundreds of FFN
   channels). The removed candidates (or, when the learned masks keep too little, every pruned candidate) are
   restored best score first, skipping those that no longer fit, the greedy "restore the best pruned units that
   fit". The kept cost is a polynomial in the kept counts with non-negative coefficients, so a candidate's marginal
   cost only grows as others are restored: one that does not fit never will. Each round takes the marginal costs
   of all candidates at once (one autograd pass) and bisects the longest run of individually-fitting candidates
   that fits together, which is exactly the sequential greedy result in a few vectorised rounds.

The correction moves one way from the learned masks (counts only fall when the learned masks keep too much, only
rise when they keep too little), so the learned per-layer distribution is the starting point and the scores decide
which units move. The result meets the target, and restoring any one candidate the correction removed (or could
have restored) would break it.

``multiple_of`` rows first move to the nearest multiple of their step (never below one step when they keep
anything; at most the largest multiple that fits in the row); with ``match_target`` the correction then moves
whole groups, so the rounding can never leave the result below the target: the sparsity lands above it by less
than one group's cost. Without ``match_target`` the rounded counts stand and the sparsity may move off the target
by up to half a group per row.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from lightning_prune.cost import CostModel
from lightning_prune.errors import PruningConfigError
from lightning_prune.structures import StructureSpec

log = logging.getLogger("lightning_prune")

#: Kept costs are exact integers in float64 (products of counts); this absorbs the rounding of ``(1 - t) · dense``.
_ABS_TOL = 1e-6


def validate_multiple_of(
    multiple_of: Mapping[str, int], specs: Mapping[str, StructureSpec], keep_units: Mapping[str, int]
) -> None:
    """Check ``multiple_of`` against the model's structures (at attach, when the row sizes are known).

    Raises:
        PruningConfigError: a step that is not a positive int, names a structure that is not gated, exceeds the
            units of a row (it would silently keep the whole row), or contradicts a ``keep_units`` count.
    """
    for name, step in multiple_of.items():
        if name not in specs:
            raise PruningConfigError(
                f"`multiple_of` names {name!r}, which is not gated (structures: {list(specs)}); add it to "
                "`structures` or drop it from `multiple_of`."
            )
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise PruningConfigError(f"`multiple_of[{name!r}]` must be a positive int (e.g. 8, 32, 64), got {step!r}.")
        units = specs[name].units
        if step > units:
            raise PruningConfigError(
                f"`multiple_of[{name!r}]`={step} exceeds the {units} units of a row of {name!r}: no row could keep "
                f"a multiple of it except 0. Choose a step of at most {units} (a divisor of {units} keeps whole rows "
                "possible)."
            )
        if name in keep_units and keep_units[name] % step:
            raise PruningConfigError(
                f"`keep_units[{name!r}]`={keep_units[name]} (or `target_architecture[{name!r}]`) is not a multiple of "
                f"`multiple_of[{name!r}]`={step}. Make the kept count a multiple of the step or drop one of them."
            )


def top_k_masks(scores: torch.Tensor, counts: torch.Tensor, prefer: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``(rows, units)`` mask keeping ``counts[r]`` units of row ``r``, best score first.

    With ``prefer`` (a boolean mask) its units come first, then the rest, each by score: the mask that changes
    ``prefer`` as little as possible (:func:`lightning_prune.ops.set_kept_count`, vectorised). Ties go to the lower
    unit index (stable sorts), so the result depends on the scores only.
    """
    order = torch.argsort(scores.float(), dim=-1, descending=True, stable=True)
    if prefer is not None:
        first = prefer.gather(-1, order)
        order = order.gather(-1, torch.argsort((~first).to(torch.uint8), dim=-1, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks < counts.to(order.device).view(-1, 1)


def round_to_multiples(
    masks: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor], multiple_of: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """Every row of a ``multiple_of`` structure moves to the nearest multiple of its step, changing the fewest units.

    A row that keeps anything keeps at least one step; no row keeps more than the largest multiple that fits.
    """
    out = dict(masks)
    for name, step in multiple_of.items():
        if name not in masks or step <= 1:
            continue
        mask = masks[name]
        units = mask.shape[-1]
        kept = mask.sum(-1)
        wanted = torch.round(kept.double() / step).long() * step
        wanted = wanted.clamp(min=step, max=units // step * step)
        wanted = torch.where(kept == 0, torch.zeros_like(wanted), wanted)
        out[name] = top_k_masks(scores[name], wanted, prefer=mask)
    return out


@dataclass
class _Order:
    """Candidates of one correction ordered once: ``slot[name]`` holds each unit's position in the order (−1: not a
    candidate); a prefix of length ``k`` is every unit with ``0 ≤ slot < k``."""

    slot: dict[str, torch.Tensor]
    size: int

    def units(self, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unit masks of the candidates flagged in ``chosen`` (boolean, one per position)."""
        pad = torch.cat([chosen, chosen.new_zeros(1)])  # slot −1 reads the padding
        return {name: pad[slot] for name, slot in self.slot.items()}

    def prefix(self, k: int) -> dict[str, torch.Tensor]:
        return {name: (slot >= 0) & (slot < k) for name, slot in self.slot.items()}


def _order(
    pool: Mapping[str, torch.Tensor],
    kept: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    specs: Mapping[str, StructureSpec],
    worst_first: bool,
    uniform: bool,
    multiple_of: Mapping[str, int],
) -> _Order:
    """Order the candidates among the ``pool`` units: worst score first (to remove) or best first (to restore).

    Within a row the units of the pool are ranked by score and cut into groups of ``multiple_of`` units (1 by
    default; to restore, only as many groups as fit below the largest multiple). With ``uniform`` a per-layer
    structure's candidate is the ``g``-th group of every row. A candidate's score is the mean of its units'.
    """
    sign = 1.0 if worst_first else -1.0
    cand_scores, cand_index, offset = [], {}, 0
    for name, members in pool.items():
        score = scores[name].float().to(members.device)
        key = torch.where(members, sign * score, torch.full_like(score, float("inf")))
        order = torch.argsort(key, dim=-1, stable=True)
        position = torch.empty_like(order)
        position.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        step = multiple_of.get(name, 1)
        groups = members.sum(-1) // step
        if not worst_first and step > 1:
            cap = members.shape[-1] // step * step
            groups = torch.minimum(groups, (cap - kept[name].sum(-1)).clamp(min=0) // step)
        group = position // step
        if uniform and specs[name].per_layer:
            groups = groups.min().expand_as(groups)
        valid = members & (group < groups[:, None])
        if uniform and specs[name].per_layer:
            local, count = group, int(groups[0]) if groups.numel() else 0
        else:
            width = int(groups.max()) if groups.numel() else 0
            rows = torch.arange(members.shape[0], device=members.device)[:, None]
            local, count = rows * width + group, members.shape[0] * width
        if count == 0:
            cand_index[name] = torch.full_like(local, -1)
            continue
        local = torch.where(valid, local, torch.zeros_like(local))
        total = torch.zeros(count, dtype=torch.float64, device=members.device)
        size = torch.zeros(count, dtype=torch.float64, device=members.device)
        total.index_add_(0, local[valid], score[valid].double())
        size.index_add_(0, local[valid], torch.ones_like(score[valid], dtype=torch.float64))
        present = size > 0  # (row, group) pairs beyond a row's groups hold no unit
        renumber = torch.cumsum(present.long(), 0) - 1 + offset
        cand_scores.append((total / size.clamp(min=1))[present])
        cand_index[name] = torch.where(valid, renumber[local], torch.full_like(local, -1))
        offset += int(present.sum())
    if offset == 0:
        return _Order(cand_index, 0)
    all_scores = torch.cat(cand_scores)
    order = torch.argsort(all_scores, descending=not worst_first, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    rank = torch.cat([rank, rank.new_full((1,), -1)])  # index −1 → −1
    return _Order({name: rank[index] for name, index in cand_index.items()}, int(order.numel()))


class _Budget:
    """The exact kept prunable size of masks, and whether it meets the target."""

    def __init__(self, cost: CostModel, target: float, metric: str, masks: Mapping[str, torch.Tensor]) -> None:
        self.cost, self.index = cost, 1 if metric == "flops" else 0
        dense = cost.dense_prunable_flops if metric == "flops" else cost.dense_prunable_params
        self.allowed = (1.0 - target) * dense
        self.masks = dict(masks)  # the structures that do not move
        self.evaluations = 0

    def kept(self, masks: Mapping[str, torch.Tensor]) -> float:
        self.evaluations += 1
        return float(self.cost.prunable({**self.masks, **masks})[self.index])

    def fits(self, masks: Mapping[str, torch.Tensor]) -> bool:
        return self.kept(masks) <= self.allowed + _ABS_TOL

    def marginals(self, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """∂ kept / ∂ mask at ``masks``: the exact cost of flipping one unit (of one candidate, summed), since the
        kept size is affine in every single row count."""
        values = {k: v.double().requires_grad_(True) for k, v in masks.items()}
        with torch.enable_grad():
            kept = self.cost.prunable({**self.masks, **values})[self.index]
            if not torch.is_tensor(kept) or not kept.requires_grad:
                return {k: torch.zeros_like(v, dtype=torch.float64) for k, v in masks.items()}
            grads = torch.autograd.grad(kept, list(values.values()), allow_unused=True)
        return {k: (g if g is not None else torch.zeros_like(values[k])) for k, g in zip(values, grads)}


def _bisect(count: int, ok) -> int:
    """The smallest ``k`` in ``[0, count]`` with ``ok(k)`` for a monotone ``ok`` (``count`` if none is)."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _trim(masks, scores, specs, budget: _Budget, uniform, multiple_of) -> tuple[dict, dict]:
    """Remove the shortest prefix of kept candidates (worst first) that meets the target; returns the new masks
    and the removed units."""
    order = _order(masks, masks, scores, specs, True, uniform, multiple_of)

    def without(k: int) -> dict[str, torch.Tensor]:
        prefix = order.prefix(k)
        return {name: mask & ~prefix[name] for name, mask in masks.items()}

    k = _bisect(order.size, lambda k: budget.fits(without(k)))
    out = without(k)
    if not budget.fits(out):
        log.warning(
            "lightning-prune: the target cannot be met by the structures that may move (%s kept after removing every "
            "movable unit, %s allowed): add structures, lower the target or the `keep_units` counts.",
            f"{budget.kept(out):.4g}",
            f"{budget.allowed:.4g}",
        )
    return out, order.prefix(k)


def _fill(masks, pool, scores, specs, budget: _Budget, uniform, multiple_of, max_rounds: int = 256) -> dict:
    """Restore candidates of ``pool`` best score first, skipping those that do not fit (sequential greedy, in
    vectorised rounds; see the module docstring)."""
    order = _order(pool, masks, scores, specs, False, uniform, multiple_of)
    if order.size == 0:
        return masks
    device = next(iter(masks.values())).device
    alive = torch.ones(order.size, dtype=torch.bool, device=device)
    for _ in range(max_rounds):
        slack = budget.allowed - budget.kept(masks)
        grads = budget.marginals(masks)
        marginal = torch.zeros(order.size + 1, dtype=torch.float64, device=device)  # the last entry: no candidate
        for name, slot in order.slot.items():
            marginal.index_add_(0, slot.reshape(-1) % (order.size + 1), grads[name].reshape(-1))
        fits = alive & (marginal[:-1] <= slack + _ABS_TOL + 1e-9 * abs(slack))
        alive &= fits  # a candidate that does not fit now never will (marginal costs only grow)
        run = fits.nonzero().flatten()
        if run.numel() == 0:
            return masks

        def restored(j: int, run=run, masks=masks) -> dict[str, torch.Tensor]:
            chosen = torch.zeros(order.size, dtype=torch.bool, device=device)
            chosen[run[:j]] = True
            return {name: masks[name] | units for name, units in order.units(chosen).items()}

        j = _bisect(run.numel(), lambda j: not budget.fits(restored(j + 1)))
        masks = restored(j)
        alive[run[: j + 1]] = False  # restored, or (the (j+1)-th) does not fit on top of them
    log.warning("lightning-prune: mask selection stopped after %d fill rounds (the target is met).", max_rounds)
    return masks


def select_masks(
    start: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor],
    specs: Mapping[str, StructureSpec],
    cost: CostModel,
    target: float,
    *,
    metric: str = "params",
    match_target: bool = True,
    uniform: bool = False,
    multiple_of: Mapping[str, int] | None = None,
    fixed: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """Binary keep masks from the learned masks ``start``: rounded to ``multiple_of`` and corrected to the target.

    Args:
        start: per structure, the learned ``(rows, units)`` masks (non-zero = kept), e.g. the top
            ``round(Σ P(kept))`` units of each row by score; with ``uniform`` the same count in every row.
        scores: per structure, the gate scores ``(rows, units)``: higher is kept first.
        specs: the structures' shapes (``per_layer`` decides whether ``uniform`` moves slices).
        cost: the model's cost model; ``start`` must name every gated structure.
        target: the sparsity to reach, a fraction of the prunable parameters (or FLOPs, see ``metric``).
        metric: ``"params"`` or ``"flops"``.
        match_target: correct the learned counts so the exact sparsity is ≥ ``target`` and as close as the units
            allow (see the module docstring); ``False`` keeps them (after ``multiple_of`` rounding).
        uniform: move per-layer structures in slices (one unit, or one group, in every row) so every row keeps
            the same count.
        multiple_of: per structure, rows keep a multiple of this many units.
        fixed: structures that never move (``keep_units``; their ``start`` masks are final).

    Returns:
        Per structure, a float ``(rows, units)`` mask of 0/1 values.

    Example::

        masks = select_masks(start, scores, pruner.specs, pruner.cost, 0.5, multiple_of={"ffn": 64})
    """
    multiple_of = {k: v for k, v in (multiple_of or {}).items() if k not in fixed}
    masks = {name: m != 0 for name, m in start.items()}
    masks = round_to_multiples(masks, scores, multiple_of)
    dtype = {name: m.dtype if m.is_floating_point() else torch.float32 for name, m in start.items()}
    movable = [n for n in masks if n not in fixed]
    if match_target and movable:
        budget = _Budget(cost, target, metric, {n: masks[n].double() for n in masks if n in fixed})
        moving = {n: masks[n] for n in movable}
        if budget.fits(moving):
            pool = {n: ~m for n, m in moving.items()}
        else:
            moving, pool = _trim(moving, scores, specs, budget, uniform, multiple_of)
        moving = _fill(moving, pool, scores, specs, budget, uniform, multiple_of)
        masks.update(moving)
    return {name: m.to(dtype[name]) for name, m in masks.items()}
