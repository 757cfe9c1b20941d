"""Continuous scale gates for polarization pruning (Zhuang et al., "Neuron-level Structured Pruning using
Polarization Regularizer", NeurIPS 2020).

Each unit has a scale ``γ ∈ [0, a]`` (``a = 1``) that multiplies its output in training, like the paper's
``SparseGate`` (a per-channel scale placed after BN, initialised to 1 and clamped to ``[0, 1]`` after every
optimizer step). The binary decision is a per-row histogram valley (paper §3.3): the first local minimum of a
100-bin histogram of γ on ``[0, 1]``; units above it are kept. Eval masks are ``γ · decision`` so the scales of
kept units are folded into the weights at export.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lightning_prune.gates.base import Gate

log = logging.getLogger("lightning_prune")

#: The ImageNet reference code warns when the valley threshold is this high: the histogram is not bimodal yet.
HIGH_THRESHOLD = 0.2
#: Threshold used when a row's histogram has no valley (the reference code's ``fixed`` strategy).
FALLBACK_THRESHOLD = 0.01


def valley_threshold(values: torch.Tensor, bins: int = 100, upper: float = 1.0) -> float | None:
    """The first histogram valley of ``values`` on ``[0, upper]`` (Zhuang et al. 2020, §3.3), or ``None``.

    Scans the bin counts left to right for the first bin ``i + 1`` with ``count[i] ≥ count[i+1] ≤ count[i+2]``
    and returns its left edge; units strictly above it are kept. ``None`` when no such bin exists (e.g. counts
    that only increase), so the caller must choose a fallback.

    Args:
        values: the γ of one row, any shape.
        bins: number of bins (100 in the paper: bin width 0.01).
        upper: the clamp bound ``a``.
    """
    hist = torch.histc(values.detach().float().flatten().clamp(0.0, upper), bins=bins, min=0.0, max=upper)
    diff = hist[1:] - hist[:-1]
    valleys = ((diff[:-1] <= 0) & (diff[1:] >= 0)).nonzero()  # bin i + 1 is a local minimum
    if valleys.numel() == 0:
        return None
    return (int(valleys[0, 0]) + 1) * upper / bins


class ScaleGate(Gate):
    """A learnable scale ``γ`` per unit, clamped to ``[0, clamp_max]`` after each optimizer step.

    The training mask is γ itself (deterministic, no sampling), ``keep_probability`` is γ (a soft kept
    fraction for the expected-size cost model) and ``score`` ranks by γ.

    Args:
        rows: independent rows (layers).
        units: units per row.
        init_value: initial γ. 1.0 (the paper's ``SparseGate``) starts from the unpruned function of a
            pretrained model; 0.5 is the paper's BN-γ initialisation, for training from scratch.
        clamp_max: the upper bound ``a`` of γ (1.0 in the paper).
        decision: ``"valley"`` (per-row histogram valley, :meth:`learned_counts`) or ``"target"`` (all units are
            candidates; the pruner's exact-target cut removes the lowest γ until the size target is met).
        bins: histogram bins of the valley search (100: bin width 0.01 on [0, 1]).
    """

    exact_zero_gradient = False  # a unit at γ = 0 still gets gradient and may come back

    def __init__(
        self,
        rows: int,
        units: int,
        init_value: float = 1.0,
        clamp_max: float = 1.0,
        decision: str = "valley",
        bins: int = 100,
    ) -> None:
        super().__init__(rows, units)
        if not 0.0 < clamp_max:
            raise ValueError(f"`clamp_max` must be positive, got {clamp_max}.")
        if not 0.0 <= init_value <= clamp_max:
            raise ValueError(f"`init_value` must lie in [0, clamp_max={clamp_max}], got {init_value}.")
        if decision not in ("valley", "target"):
            raise ValueError(f"`decision` must be 'valley' or 'target', got {decision!r}.")
        self.clamp_max = float(clamp_max)
        self.decision = decision
        self.bins = int(bins)
        self.gamma = nn.Parameter(torch.full((rows, units), float(init_value)))

    def sample(self) -> torch.Tensor:
        return self.gamma.float()

    def keep_probability(self) -> torch.Tensor:
        return self.gamma.float() / self.clamp_max

    def score(self) -> torch.Tensor:
        return self.gamma.detach().float()

    @torch.no_grad()
    def valley_thresholds(self) -> torch.Tensor:
        """Per-row valley threshold, shape ``(rows,)``; :data:`FALLBACK_THRESHOLD` where a row has no valley."""
        out = []
        for r in range(self.rows):
            thr = valley_threshold(self.gamma[r], self.bins, self.clamp_max)
            if thr is None:
                log.warning(
                    "lightning-prune: no histogram valley in row %d of a scale gate; using γ > %.2f.",
                    r,
                    FALLBACK_THRESHOLD * self.clamp_max,
                )
                thr = FALLBACK_THRESHOLD * self.clamp_max
            elif thr > HIGH_THRESHOLD * self.clamp_max:  # debug: stats() asks every step while γ still spreads
                log.debug("lightning-prune: valley threshold %.2f in row %d is high; γ may not be bimodal yet.", thr, r)
            out.append(thr)
        return torch.tensor(out, dtype=torch.float32, device=self.gamma.device)

    @torch.no_grad()
    def learned_counts(self) -> torch.Tensor:
        """Units above the row's valley threshold, at least one per row (a row is never emptied by the valley:
        the reference code has no guard, a row of all-small γ would lose every unit)."""
        if self.decision == "target":
            return torch.full((self.rows,), float(self.units), device=self.gamma.device)
        above = (self.gamma.float() > self.valley_thresholds()[:, None]).sum(-1).float()
        return above.clamp(min=1.0)

    def eval_values(self, binary: torch.Tensor) -> torch.Tensor:
        """``γ · binary``: kept units keep their learned scale, which the export folds into the weights."""
        return self.gamma.detach().float() * binary.to(self.gamma.device, torch.float32)

    default_importance_spread = 0.01

    @torch.no_grad()
    def init_from_ranks_(self, ranks: torch.Tensor, spread: float) -> None:
        """``γ = top · (1 − spread · (1 − rank))``: γ scales the unit's output in training, so only a small spread
        (0.01 by default) keeps the function of the model while ordering the units for the target cut."""
        top = float(self.gamma.mean())
        self.gamma.copy_(
            (top * (1.0 - spread * (1.0 - ranks.to(self.gamma.device, torch.float32)))).clamp(0, self.clamp_max)
        )

    @torch.no_grad()
    def post_step_(self) -> None:
        """Clamp γ to ``[0, a]`` after the optimizer step (paper §3.2; ``clamp_bn`` in the reference code)."""
        self.gamma.clamp_(0.0, self.clamp_max)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, units={self.units}, decision={self.decision!r}, clamp_max={self.clamp_max}"
