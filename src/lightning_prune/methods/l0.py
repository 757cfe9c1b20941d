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

from lightning_prune.constraint import LagrangianConstraint, WarmupTarget
from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.methods.l0_targets import TargetArchitectureRegularizer, validate_target_architecture
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner


class LagrangianRegularizer(WarmupTarget):
    """Penalty ``λ1(ŝ−t) + λ2(ŝ−t)²`` on the expected sparsity of the cost model."""

    def __init__(self, target_sparsity: float, warmup_steps: int, target: str) -> None:
        super().__init__(target_sparsity, warmup_steps)
        self.target = target
        self.constraint = LagrangianConstraint()

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
        target_architecture: units to keep in *every* row per structure, e.g. ``{"heads": 2, "ffn": 96,
            "hidden": 48}`` (Sheared-LLaMA's targeted structured pruning): one Lagrangian term per structure on
            its expected kept fraction, warmed up from the dense size over ``warmup_steps``, and deterministic
            masks that keep exactly these counts, so the export is a uniform, standard config. ``heads`` counts
            key/value groups (each keeps its ``num_attention_heads / num_key_value_heads`` query heads), so any
            count up to ``num_key_value_heads`` gives a valid GQA config. Every structure in ``structures`` needs a
            count; ``target_sparsity`` must then be left unset (the sparsity follows from the architecture and is
            reported by ``pruner.current_target()``); ``keep_units`` may repeat a count but not contradict it.
        gate_lr: 0.5 for L0 (the base default is 0.1): with Adam a gate moves about ``gate_lr`` per step, and the
            gates must follow the target warm-up (issue #18).
        lagrangian_lr: 0.5 for L0, for the same reason (λ moves about ``lagrangian_lr`` per step).
        init_from_importance: on by default for L0: a dense phase (``dense_steps > 0``) scores every unit by its
            Fisher and the gates start from that ranking (see :mod:`lightning_prune.importance`); without a dense
            phase nothing changes.

    Example::

        pruner = lightning_prune.attach(model, lightning_prune.L0Config(target_sparsity=0.5,
                                                                          structures=("heads", "ffn")))
        # Sheared-LLaMA: end with exactly 2 KV groups and 96 FFN channels in every layer
        cfg = lightning_prune.L0Config(structures=("heads", "ffn"), target_architecture={"heads": 2, "ffn": 96},
                                       warmup_steps=200)
    """

    target_sparsity: float | None = None  # None: 0.5, or derived from `target_architecture` when that is given
    # issue #18: at 0.1 / 0.01 the gates could not follow a short target warm-up (the freeze's exact-target cut then
    # did the pruning in one step); 0.5 / 0.5 is what `recipes.l0` measured best
    gate_lr: float = 0.5
    lagrangian_lr: float | None = 0.5

    init_log_alpha: float = 3.0
    temperature: float = 2.0 / 3.0
    log_alpha_clamp: float = math.log(100.0)
    target_architecture: dict[str, int] | None = None
    init_from_importance: bool = True  # issue #18: +6.5 points at 50% on benchmarks/quality.py --quick (0.440 → 0.505)

    gate_kind = "hard_concrete"

    def __post_init__(self) -> None:
        if self.target_architecture is not None:
            if self.target_sparsity is not None:
                raise PruningConfigError(
                    f"Conflicting targets: `target_sparsity`={self.target_sparsity!r} and `target_architecture`="
                    f"{self.target_architecture!r}. The target architecture fixes the size (its sparsity is derived "
                    "and reported); remove `target_sparsity`."
                )
            self.target_sparsity = 0.0  # the global size target is unused; the warm-up starts from the dense model
        elif self.target_sparsity is None:
            self.target_sparsity = 0.5
        super().__post_init__()
        positive_float(self.temperature, "temperature")
        positive_float(self.log_alpha_clamp, "log_alpha_clamp")
        if self.target_architecture is not None:
            if isinstance(self.structures, str):
                self.structures = (self.structures,)
            validate_target_architecture(self.target_architecture, tuple(self.structures), dict(self.keep_units))
            self.target_architecture = dict(self.target_architecture)
            self.keep_units = {**dict(self.keep_units), **self.target_architecture}  # exact counts at eval/export

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.target_architecture is not None:
            out["target_sparsity"] = None  # derived, so that L0Config(**out) round-trips
        return out

    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {
            "init_log_alpha": self.init_log_alpha,
            "temperature": self.temperature,
            "log_alpha_clamp": self.log_alpha_clamp,
        }

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        if self.target_architecture is not None:
            return TargetArchitectureRegularizer(pruner, self.target_architecture, self.warmup_steps, self.target)
        return LagrangianRegularizer(self.target_sparsity, self.warmup_steps, self.target)
