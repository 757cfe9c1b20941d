"""Straight-through binary gates with a Lagrangian size target.

The gates are :class:`~lightning_prune.gates.ste.STEGate`: the training forward already multiplies by the
binary mask ``1[s > 0]`` and the identity straight-through estimator passes the gradient to ``s`` (SCL, Tang et
al., arXiv 2201.05020; the binarised gates of the consensus sub-network paper, arXiv 2302.10798). The size
target is CoFi's Lagrangian ``λ1(ŝ−t) + λ2(ŝ−t)²`` (Xia et al. 2022) on the *exact* sparsity of the binary
masks: with the STE its gradient w.r.t. a unit's score is that unit's marginal cost, the role SCL's
connection-count regulariser plays. Training and export use the same mask, so the export is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.methods.l0 import LagrangianRegularizer
from lightning_prune.structures import StructureSpec

log = logging.getLogger("lightning_prune")

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner


def check_score_fields(init_score: float, score_clamp: float | None) -> None:
    """The STE gate's ``init_score`` (positive) and ``score_clamp`` (positive or ``None``, at least ``init_score``)."""
    positive_float(init_score, "init_score")
    if score_clamp is not None:
        positive_float(score_clamp, "score_clamp")
        if init_score > score_clamp:
            raise PruningConfigError(f"`init_score`={init_score} exceeds `score_clamp`={score_clamp}; lower it.")


@register_method("ste")
@dataclass
class STEConfig(PruningConfig):
    """Binary gates trained with an identity straight-through estimator and a Lagrangian target.

    Args (in addition to :class:`~lightning_prune.PruningConfig`):
        init_score: initial score of every unit (positive: all kept at the start).
        score_clamp: scores are clamped to ``[−c, c]`` after each step so pruned units stay within reach.

    ``match_target`` is off: the deterministic mask is exactly the training mask (a correction to the target
    would make export differ from training). Per-feature normalisation of the mask gradients (SCL) is not
    implemented; Adam's per-parameter scaling plays a similar role.
    """

    init_score: float = 0.5
    score_clamp: float | None = 1.0
    match_target: bool = False
    gate_lr: float = 0.05

    gate_kind = "ste"
    #: ``match_target`` stays False after attach too: the export mask must be the training mask.
    live_fields: ClassVar[tuple[str, ...]] = ("export_rtol",)

    def __post_init__(self) -> None:
        if self.multiple_of:
            raise PruningConfigError(
                "`multiple_of` is not supported by STEConfig: the eval/export mask must equal the binary training "
                "mask, so its counts cannot be rounded after training. Use L0Config(multiple_of=...) instead."
            )
        if self.match_target:
            raise PruningConfigError(
                "`match_target`=True is not supported by STEConfig: the eval/export mask must equal the binary "
                "training mask. Leave it False; the Lagrangian brings the training mask to the target."
            )
        super().__post_init__()
        check_score_fields(self.init_score, self.score_clamp)

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {"init_score": self.init_score, "score_clamp": self.score_clamp}

    #: How far (absolute sparsity) the binary mask may be from the target when the masks freeze before
    #: :meth:`on_freeze` projects it onto the target.
    freeze_tolerance: ClassVar[float] = 0.005

    def on_freeze(self, pruner: Pruner) -> None:
        """Project the binary mask onto the size target when the masks freeze, if the Lagrangian left it off.

        In a short run the Lagrangian may not bring the training mask to the target (41% for a 50% target on the
        quality benchmark's quick budget). The scores are moved just across the threshold so that the mask becomes
        the target's selection by score (the pruner's exact selection, started from the current mask); the frozen
        phase then trains with exactly that mask, which is the one exported, so the training and export masks
        still agree. Without a frozen phase nothing is projected: the export is the last training mask.
        """
        from lightning_prune.selection import select_masks

        target = pruner.current_target()
        masks = pruner.deterministic_masks()
        exact = float(pruner.cost.sparsity(masks, self.target))
        if abs(exact - target) <= self.freeze_tolerance:
            return
        scores = {name: gate.score() for name, gate in pruner.gates.items()}
        projected = select_masks(
            masks,
            scores,
            pruner.specs,
            pruner.cost,
            target,
            metric=self.target,
            match_target=True,
            uniform=self.uniform,
            fixed=set(self.keep_units),
        )
        margin = 1e-3 * (self.score_clamp or 1.0)
        with torch.no_grad():
            for name, gate in pruner.gates.items():
                keep = projected[name].to(gate.scores.device) > 0
                gate.scores.copy_(torch.where(keep, gate.scores.clamp(min=margin), gate.scores.clamp(max=-margin)))
        after = float(pruner.cost.sparsity(pruner.deterministic_masks(), self.target))
        log.warning(
            "lightning-prune: the STE masks froze at sparsity %.3f for a target of %.3f; projected onto the target's "
            "selection by score (now %.3f). The frozen phase trains with this mask, which is the one exported.",
            exact,
            target,
            after,
        )

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        return LagrangianRegularizer(self.target_sparsity, self.warmup_steps, self.target)
