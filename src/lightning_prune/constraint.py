"""Lagrangian sparsity constraint (Wang et al. 2020, "Structured Pruning of Large Language Models";
CoFi, Xia et al. 2022, eq. 6; Sheared-LLaMA, Xia et al. 2023, eq. 1).

``L_c = λ1·(ŝ − t) + λ2·(ŝ − t)²`` where ŝ is the expected sparsity under the gates and t the target,
warmed up linearly from 0. The gates minimise L_c while λ1, λ2 *maximise* it (a min-max game): λ get
their gradient reversed on the way back (:class:`GradientReversal`), so any optimizer that minimises
performs gradient ascent on them: no negative learning rate (torch optimizers reject one) and no
tensor hook that a deep copy or a checkpoint could lose.
"""

from __future__ import annotations

import torch
from torch import nn


def linear_warmup(target: float, step: int, warmup_steps: int) -> float:
    """Target after ``step`` pruning steps: rises linearly from 0 to ``target`` over ``warmup_steps``."""
    if warmup_steps <= 0:
        return target
    return target * min(1.0, max(step, 0) / warmup_steps)


class WarmupTarget(nn.Module):
    """A regulariser's target schedule: ``target_sparsity`` reached linearly over ``warmup_steps`` pruning steps
    (:meth:`current_target`, which the pruner reads for its masks). Methods add their penalty in ``forward``."""

    def __init__(self, target_sparsity: float, warmup_steps: int) -> None:
        super().__init__()
        self.target_sparsity = target_sparsity
        self.warmup_steps = warmup_steps

    def current_target(self, step: int) -> float:
        return linear_warmup(self.target_sparsity, step, self.warmup_steps)


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass, ``−grad`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return -grad


class LagrangianConstraint(nn.Module):
    """Holds λ1 and λ2 (initialised at 0) and computes the constraint term."""

    def __init__(self) -> None:
        super().__init__()
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def forward(self, expected_sparsity: torch.Tensor, target: float) -> torch.Tensor:
        gap = expected_sparsity - target
        lambda_1 = GradientReversal.apply(self.lambda_1)  # ascent for the multipliers
        lambda_2 = GradientReversal.apply(self.lambda_2)
        return lambda_1 * gap + lambda_2 * gap * gap
