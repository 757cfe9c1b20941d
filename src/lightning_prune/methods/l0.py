"""L0 / hard-concrete structured pruning with a Lagrangian size target.

Hard-concrete gates (Louizos et al. 2018) over heads, FFN channels, hidden dims and whole blocks, with
the expected-size Lagrangian of CoFi (Xia et al., "Structured Pruning Learns Compact and Accurate
Models", ACL 2022) and Sheared-LLaMA (Xia et al., "Sheared LLaMA: Accelerating Language Model
Pre-training via Structured Pruning", ICLR 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.constraint import LagrangianConstraint, linear_warmup
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner


class LagrangianRegularizer(nn.Module):
    """Penalty ``λ1(ŝ−t) + λ2(ŝ−t)²`` on the expected sparsity of the cost model."""

    def __init__(self, target_sparsity: float, warmup_steps: int, target: str) -> None:
        super().__init__()
        self.target_sparsity = target_sparsity
        self.warmup_steps = warmup_steps
        self.target = target
        self.constraint = LagrangianConstraint()

    def current_target(self, step: int) -> float:
        return linear_warmup(self.target_sparsity, step, self.warmup_steps)

    def forward(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        expected = pruner.expected_sparsity(self.target)
        t = self.current_target(pruner.pruning_step)
        return {"lagrangian": self.constraint(expected, t)}

    def multipliers(self) -> list[nn.Parameter]:
        return [self.constraint.lambda_1, self.constraint.lambda_2]


@register_method("l0")
@dataclass
class L0Config(PruningConfig):
    """Hard-concrete (L0) gates with a Lagrangian target on parameters or FLOPs.

    Args (in addition to :class:`~lightning_prune.PruningConfig`):
        init_log_alpha: initial ``log α`` of the gates (3.0: P(kept) ≈ 0.99; CoFi and Sheared-LLaMA start
            at the clamp ±4.6).
        temperature: hard-concrete β (2/3 in the paper).
        log_alpha_clamp: ``log α`` is clamped to ``[−c, c]`` after each step (``log 100 ≈ 4.6``).

    Example::

        pruner = lightning_prune.attach(model, lightning_prune.L0Config(target_sparsity=0.5,
                                                                          structures=("heads", "ffn")))
    """

    init_log_alpha: float = 3.0
    temperature: float = 2.0 / 3.0
    log_alpha_clamp: float = math.log(100.0)

    gate_kind = "hard_concrete"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_float(self.temperature, "temperature")
        positive_float(self.log_alpha_clamp, "log_alpha_clamp")

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {
            "init_log_alpha": self.init_log_alpha,
            "temperature": self.temperature,
            "log_alpha_clamp": self.log_alpha_clamp,
        }

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        return LagrangianRegularizer(self.target_sparsity, self.warmup_steps, self.target)
