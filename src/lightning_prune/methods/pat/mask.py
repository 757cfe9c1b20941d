"""PAT's globally shared trainable mask over hidden channels and its schedule.

Liu et al., "PAT: Pruning-Aware Tuning for Large Language Models", arXiv 2408.14721, §3 (Hybrid
Sparsification Modules, trainable mask). One logit vector ``m ∈ R^d`` (initialised at 0) gates every write to
the residual stream. With ``t`` the optimizer step (``pruner.pruning_step``) and ``T`` the schedule length::

    τ(t) = 1 / (1 − ln max(1, t) / ln T + 1e-6)        temperature, rises from 1 towards 1e6
    b(t) = max(0.5 − t / T, 0)                          bias, decays to 0 at t = T/2
    m̃(t) = σ(max(τ(t)·m, −10)) + b(t)                   training mask (≥ 4.5e-5: the clamp of the authors' code)

At initialisation ``m̃ = σ(0) + 0.5 = 1`` exactly, so the model starts as the unpruned one. From
``t ≥ freeze_fraction·T`` (0.8 in the paper) the logits are detached and ``τ`` stays at ``τ(freeze_fraction·T)``:
the mask no longer changes and gets no gradient. At inference the mask is binary, ``1[m ≥ 0]`` (the same rule
that the count loss uses; the authors' script keeps ``m > 0``, which differs only at exactly 0, e.g. at init).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_prune.gates.base import Gate

#: The authors' code clamps the exponent of the sigmoid at 10: the training mask never drops below σ(−10).
LOGIT_CLAMP = 10.0
#: Bias at t = 0; with σ(0) = 0.5 the initial mask is exactly 1.
INITIAL_BIAS = 0.5


def freeze_step(total_steps: int, freeze_fraction: float) -> int:
    """First optimizer step at which the mask is frozen: ``round(freeze_fraction · T)``."""
    return int(round(freeze_fraction * total_steps))


def temperature(step: int, total_steps: int, freeze_fraction: float = 0.8) -> float:
    """``τ(t) = 1 / (1 − ln max(1, t) / ln T + 1e-6)``, held at its value at the freeze step afterwards."""
    t = max(1, min(step, freeze_step(total_steps, freeze_fraction)))
    return 1.0 / (1.0 - math.log(t) / math.log(total_steps) + 1e-6)


def mask_bias(step: int, total_steps: int) -> float:
    """``b(t) = max(0.5 − t/T, 0)``: lifts every channel early in training so pruning starts gently."""
    return max(INITIAL_BIAS - step / total_steps, 0.0)


class PATMaskGate(Gate):
    """The shared hidden-channel mask of PAT as a gate of the engine (structure ``hidden``, one row).

    The schedule reads the pruning step from the module it is bound to (:meth:`bind_step`; the pruner binds
    its :class:`~lightning_prune.pruner.PruningState`), so it follows ``Pruner.step()`` and the phases the
    Lightning callback sets, and resumes with the checkpointed step.

    Args:
        rows: must be 1 (one mask shared by every HSM).
        units: hidden channels ``d``.
        total_steps: ``T`` of the schedule (``--global_step``, 10000 in the paper's Llama-2 runs).
        freeze_fraction: the mask is frozen from ``freeze_fraction · T`` on (0.8 in the paper).
    """

    exact_zero_gradient = False  # the training mask is σ(·) + b > 0: never exactly 0

    def __init__(self, rows: int, units: int, total_steps: int = 10000, freeze_fraction: float = 0.8) -> None:
        super().__init__(rows, units)
        if total_steps < 2:
            raise ValueError(f"`total_steps` must be >= 2 (τ divides by ln T), got {total_steps}.")
        if not 0.0 < freeze_fraction <= 1.0:
            raise ValueError(f"`freeze_fraction` must be in (0, 1], got {freeze_fraction}.")
        self.total_steps = int(total_steps)
        self.freeze_fraction = float(freeze_fraction)
        self.logits = nn.Parameter(torch.zeros(rows, units))
        object.__setattr__(self, "_step_owner", None)  # not a submodule: the owner contains this gate

    def bind_step(self, owner: nn.Module) -> None:
        """Read the schedule's step from ``owner.step`` (a long buffer) from now on."""
        object.__setattr__(self, "_step_owner", owner)

    @property
    def current_step(self) -> int:
        owner = self._step_owner
        return 0 if owner is None else int(owner.step)

    def is_frozen(self, step: int | None = None) -> bool:
        """Whether the mask is frozen at ``step`` (default: the current step)."""
        step = self.current_step if step is None else step
        return step >= freeze_step(self.total_steps, self.freeze_fraction)

    def soft_mask(self, step: int | None = None) -> torch.Tensor:
        """``σ(max(τ(t)·m, −10)) + b(t)``, with ``m`` detached once frozen; shape ``(1, d)``."""
        step = self.current_step if step is None else step
        logits = self.logits.float()
        if self.is_frozen(step):
            logits = logits.detach()
        tau = temperature(step, self.total_steps, self.freeze_fraction)
        return torch.sigmoid((tau * logits).clamp(min=-LOGIT_CLAMP)) + mask_bias(step, self.total_steps)

    def sample(self) -> torch.Tensor:
        return self.soft_mask()

    def keep_probability(self) -> torch.Tensor:
        return self.soft_mask().clamp(max=1.0)

    def score(self) -> torch.Tensor:
        return self.logits.detach().float()

    def deterministic(self, counts: torch.Tensor) -> torch.Tensor:
        """The inference mask ``1[m ≥ 0]``; PAT's kept count is learned, so ``counts`` is ignored."""
        return (self.logits.detach().float() >= 0).float()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, total_steps={self.total_steps}, freeze_fraction={self.freeze_fraction}"
