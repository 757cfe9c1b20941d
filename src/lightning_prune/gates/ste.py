"""Binary gates with an identity straight-through estimator.

The forward mask is already binary, ``M = step(s) = 1[s > 0]`` for a learnable score ``s``, and the backward
pass treats the step as the identity (``∂M/∂s := 1``), the "Identity STE" that SCL adopts (Tang et al.,
"Automatic Sparse Connectivity Learning for Neural Networks", arXiv 2201.05020: the proxy gradient must be
positive so mask variables converge) and the binarised gating of the consensus sub-network paper (arXiv
2302.10798). Because training already uses the binary mask, training and export agree exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.gates.base import Gate


def identity_ste(scores: torch.Tensor) -> torch.Tensor:
    """``1[s > 0]`` in the forward pass, gradient 1 w.r.t. ``s`` in the backward pass.

    ``hard + (s − s.detach())`` is exactly ``hard`` in floating point (``s − s`` is 0 for finite ``s``).
    """
    hard = (scores > 0).to(scores.dtype)
    return hard + (scores - scores.detach())  # (s − s) first: exactly 0, so the sum is exactly `hard`


class STEGate(Gate):
    """A score per unit; the unit is kept while its score is positive.

    ``sample`` and ``keep_probability`` are both the straight-through binary mask, so the expected size the
    regulariser sees is the exact size, and its gradient w.r.t. a score is the unit's marginal cost.

    Args:
        rows: independent rows (layers).
        units: units per row.
        init_score: initial score (positive: every unit starts kept).
        score_clamp: scores are clamped to ``[−c, c]`` after each step so a pruned unit stays within reach of
            the threshold (``None``: no clamp).
    """

    exact_zero_gradient = False  # identity STE: a pruned unit (mask 0) still gets gradient and may come back

    def __init__(self, rows: int, units: int, init_score: float = 0.5, score_clamp: float | None = 1.0) -> None:
        super().__init__(rows, units)
        if score_clamp is not None and not score_clamp > 0:
            raise ValueError(f"`score_clamp` must be positive or None, got {score_clamp}.")
        self.score_clamp = score_clamp
        self.scores = nn.Parameter(torch.full((rows, units), float(init_score)))

    def sample(self) -> torch.Tensor:
        return identity_ste(self.scores.float())

    def keep_probability(self) -> torch.Tensor:
        return identity_ste(self.scores.float())

    def score(self) -> torch.Tensor:
        return self.scores.detach().float()

    def learned_counts(self) -> torch.Tensor:
        return (self.scores.detach() > 0).sum(-1).float()

    def deterministic(self, counts: torch.Tensor) -> torch.Tensor:
        """The training mask ``1[s > 0]`` when ``counts`` are the learned ones; otherwise the top-``counts`` by score
        (``keep_units`` fixed counts)."""
        hard = (self.scores.detach() > 0).float()
        if torch.equal(counts.to(hard.device).long(), hard.sum(-1).long()):
            return hard
        return super().deterministic(counts)

    default_importance_spread = 0.9

    @torch.no_grad()
    def init_from_ranks_(self, ranks: torch.Tensor, spread: float) -> None:
        """``s = top · (1 − spread · (1 − rank))`` with ``top`` the current (initial) score: every unit stays kept
        (``spread < 1``), the least important nearest the threshold, where the Lagrangian flips it first."""
        top = float(self.scores.mean())
        self.scores.copy_(top * (1.0 - spread * (1.0 - ranks.to(self.scores.device, torch.float32))))

    @torch.no_grad()
    def post_step_(self) -> None:
        if self.score_clamp is not None:
            self.scores.clamp_(-self.score_clamp, self.score_clamp)
