"""Hard-concrete (L0) gates, Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
Regularization", ICLR 2018, as used for structured pruning by CoFi (Xia et al. 2022), Sheared-LLaMA
(Xia et al. 2023) and Compresso (Guo et al. 2023).

A unit's gate is ``z = min(1, max(0, s·(ζ−γ) + γ))`` with ``s = σ((log u − log(1−u) + log α)/β)``,
``u ~ U(0, 1)``: a "stretched and rectified" binary concrete variable that is exactly 0 or 1 with
non-zero probability, so the expected L0 norm ``P(z ≠ 0) = σ(log α − β·log(−γ/ζ))`` (paper eq. 12) is
differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_prune.gates.base import Gate


class HardConcreteGate(Gate):
    """Hard-concrete gate with the paper's constants.

    Args:
        rows: independent rows (layers).
        units: units per row.
        init_log_alpha: initial mean of ``log α``. The default 3.0 gives ``P(z ≠ 0) ≈ 0.99`` so
            training starts from an (almost) unpruned model while ~20% of samples still fall in the
            linear region and carry gradient (CoFi/Sheared-LLaMA start at the clamp, 4.6).
        init_std: standard deviation of the initial ``log α`` (0.01 in the reference code).
        temperature: β = 2/3.
        limit_left: γ = −0.1.
        limit_right: ζ = 1.1.
        log_alpha_clamp: ``log α`` is clamped to ``[−c, c]`` after every step; ``c = log(100) ≈ 4.6``.
    """

    eps = 1e-6
    exact_zero_gradient = True  # z = clamp(·, 0, 1): a sample at 0 has no gradient w.r.t. log α

    def __init__(
        self,
        rows: int,
        units: int,
        init_log_alpha: float = 3.0,
        init_std: float = 0.01,
        temperature: float = 2.0 / 3.0,
        limit_left: float = -0.1,
        limit_right: float = 1.1,
        log_alpha_clamp: float = math.log(100.0),
    ) -> None:
        super().__init__(rows, units)
        if not (limit_left < 0.0 < 1.0 < limit_right):
            raise ValueError(f"Hard-concrete needs γ < 0 < 1 < ζ, got γ={limit_left}, ζ={limit_right}.")
        if temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {temperature}.")
        self.temperature = temperature
        self.limit_left = limit_left
        self.limit_right = limit_right
        self.log_alpha_clamp = log_alpha_clamp
        self.log_alpha = nn.Parameter(torch.full((rows, units), float(init_log_alpha)))
        with torch.no_grad():
            self.log_alpha.add_(torch.randn_like(self.log_alpha) * init_std)
        # log(−γ/ζ) enters P(z ≠ 0); a constant, precomputed once.
        self._log_ratio = math.log(-limit_left / limit_right)

    def sample(self) -> torch.Tensor:
        log_alpha = self.log_alpha.float()
        u = torch.rand_like(log_alpha).clamp(self.eps, 1.0 - self.eps)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.temperature)
        stretched = s * (self.limit_right - self.limit_left) + self.limit_left
        return stretched.clamp(0.0, 1.0)

    def keep_probability(self) -> torch.Tensor:
        """``P(z ≠ 0) = σ(log α − β·log(−γ/ζ))`` (Louizos et al. 2018, eq. 12)."""
        return torch.sigmoid(self.log_alpha.float() - self.temperature * self._log_ratio)

    def score(self) -> torch.Tensor:
        return self.log_alpha.detach().float()

    default_importance_spread = 3.0

    @torch.no_grad()
    def init_from_ranks_(self, ranks: torch.Tensor, spread: float) -> None:
        """``log α = top − spread · (1 − rank)``: the most important unit keeps the current (initial) ``log α``
        (3.0 by default: P(kept) ≈ 0.99), the least starts ``spread`` lower (3.0: ``log α = 0``, P(kept) ≈ 0.83),
        so the Lagrangian's pull (∝ σ'(log α)) closes the least important gates first. Kept inside the clamp, so
        the order is strict."""
        top = float(self.log_alpha.mean().clamp(-self.log_alpha_clamp, self.log_alpha_clamp))
        values = top - spread * (1.0 - ranks.to(self.log_alpha.device, torch.float32))
        self.log_alpha.copy_(values.clamp(-self.log_alpha_clamp, self.log_alpha_clamp))

    @torch.no_grad()
    def post_step_(self) -> None:
        self.log_alpha.clamp_(-self.log_alpha_clamp, self.log_alpha_clamp)
