"""The gate interface: a learnable mask over ``(rows, units)``.

A *gate* produces one mask value per prunable unit (a head, an FFN channel, a hidden dim, a block).
Rows are independent groups that are ranked separately (usually one row per layer); units are the
members of a row. A gate is sampled (stochastic or soft) in training and deterministic in eval.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class Gate(nn.Module, abc.ABC):
    """Base class of every gate kind.

    Subclasses implement :meth:`sample` (the training-time mask), :meth:`keep_probability` (the
    differentiable probability that a unit is kept, used by the expected-size cost model) and
    :meth:`score` (the ranking used for deterministic top-k masks).

    Args:
        rows: number of independent rows (e.g. layers).
        units: number of units per row (e.g. heads per layer).
    """

    #: True when a mask value of exactly 0 has zero gradient w.r.t. the gate parameters (as for a clamped
    #: hard-concrete sample); hooks may then use :func:`lightning_prune.ops.mask_mul`, which saves memory.
    exact_zero_gradient: bool = False

    def __init__(self, rows: int, units: int) -> None:
        super().__init__()
        if rows < 1 or units < 1:
            raise ValueError(f"A gate needs at least one row and one unit, got rows={rows}, units={units}.")
        self.rows = rows
        self.units = units

    @abc.abstractmethod
    def sample(self) -> torch.Tensor:
        """Training-time mask of shape ``(rows, units)``, differentiable w.r.t. the gate parameters."""

    @abc.abstractmethod
    def keep_probability(self) -> torch.Tensor:
        """Differentiable probability (or soft fraction) that each unit is kept, shape ``(rows, units)``."""

    def score(self) -> torch.Tensor:
        """Ranking score for deterministic masks; higher is kept first. Defaults to :meth:`keep_probability`."""
        return self.keep_probability().detach()

    def expected_kept(self) -> torch.Tensor:
        """Expected number of kept units per row, shape ``(rows,)``."""
        return self.keep_probability().sum(dim=-1)

    def learned_counts(self) -> torch.Tensor:
        """Units per row the gate itself would keep (float, rounded by the pruner), shape ``(rows,)``.

        Used by deterministic masks when no count is fixed. Defaults to :meth:`expected_kept` (CoFi's
        ``round(Σ P(kept))``); a gate with its own decision rule (polarization's histogram valley) overrides it.
        """
        return self.expected_kept()

    def eval_values(self, binary: torch.Tensor) -> torch.Tensor:
        """The eval-mode mask from the final binary decision ``binary`` (``(rows, units)``, values 0/1).

        Defaults to ``binary``. A gate whose training forward scales units (polarization's γ) returns
        ``γ · binary`` so that eval and export compute what training computed for the kept units.
        """
        return binary

    def deterministic(self, counts: torch.Tensor) -> torch.Tensor:
        """Binary mask that keeps exactly ``counts[r]`` units of row ``r``, the best by :meth:`score`.

        Ties are broken by unit index (a stable sort), so the mask never depends on anything but the
        gate parameters.
        """
        scores = self.score().float()
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(self.units, device=order.device).expand_as(order))
        counts = counts.to(order.device).clamp(0, self.units).view(-1, 1)
        return (ranks < counts).to(scores.dtype)

    #: Default ``spread`` of :meth:`init_from_ranks_` (in the units of the gate's parameter); ``None``: unsupported.
    default_importance_spread: float | None = None

    @torch.no_grad()
    def init_from_ranks_(self, ranks: torch.Tensor, spread: float) -> None:
        """Set the parameters from importance ranks ``(rows, units)`` in ``[0, 1]`` (1: most important), keeping
        the order strict: :meth:`score` increases with the rank (see :mod:`lightning_prune.importance`).

        Raises:
            NotImplementedError: the gate kind has no importance init.
        """
        raise NotImplementedError(f"{type(self).__name__} has no importance initialisation.")

    @torch.no_grad()
    def post_step_(self) -> None:
        """Called after each optimizer step (e.g. to clamp parameters). Does nothing by default."""

    def extra_repr(self) -> str:
        return f"rows={self.rows}, units={self.units}"
