"""Straight-through binary gates with a Lagrangian size target.

The gates are :class:`~lightning_prune.gates.ste.STEGate`: the training forward already multiplies by the
binary mask ``1[s > 0]`` and the identity straight-through estimator passes the gradient to ``s`` (SCL, Tang et
al., arXiv 2201.05020; the binarised gates of the consensus sub-network paper, arXiv 2302.10798). The size
target is CoFi's Lagrangian ``λ1(ŝ−t) + λ2(ŝ−t)²`` (Xia et al. 2022) on the *exact* sparsity of the binary
masks: with the STE its gradient w.r.t. a unit's score is that unit's marginal cost, the role SCL's
connection-count regulariser plays. Training and export use the same mask, so the export is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.methods.l0 import LagrangianRegularizer
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner


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
        positive_float(self.init_score, "init_score")
        if self.score_clamp is not None:
            positive_float(self.score_clamp, "score_clamp")
            if self.init_score > self.score_clamp:
                raise PruningConfigError(
                    f"`init_score`={self.init_score} exceeds `score_clamp`={self.score_clamp}; lower it."
                )

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {"init_score": self.init_score, "score_clamp": self.score_clamp}

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        return LagrangianRegularizer(self.target_sparsity, self.warmup_steps, self.target)
