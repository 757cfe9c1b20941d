"""The phase schedule of the L0 recipe: which fraction of a run is dense, warms the target up, and is frozen.

Kept apart from :mod:`lightning_prune.recipes` (which builds callbacks) so that the integrations' ``schedule="auto"``
can read it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_prune.errors import PruningConfigError


@dataclass(frozen=True)
class L0Schedule:
    """Phases and learning rates of :func:`l0` (measured on ``benchmarks/quality.py``, issue #18).

    Attributes:
        dense: dense warm-up, a fraction of ``max_steps``; with ``init_from_importance`` it also accumulates the
            units' Fisher scores. ``None``: by the run's length (below).
        warmup: target warm-up (the Lagrangian's target rises linearly from 0), counted from the end of the dense
            phase; ``None``: by the run's length.
        freeze: global step (fraction) from which the masks are frozen and the model fine-tunes its final shape;
            ``None``: by the run's length.
        gate_lr: learning rate of the hard-concrete ``log α``.
        lagrangian_lr: learning rate of λ1, λ2 (gradient ascent).
        reset_optimizer_at_freeze: fresh optimizer state for the model's weights when the masks freeze.
        long_run: runs of at least this many steps get the long-run phases.

    Short runs (under ``long_run`` steps): dense 10%, target warm-up 30%, freeze at 50%. Long runs: dense 30%,
    warm-up 5%, freeze at 40% — the importance-initialised gates start where a one-shot cut at the two-stage
    pipeline's step would, and a short learned phase refines them. Above a 50% target the long-run warm-up grows by
    :data:`HIGH_TARGET_WARMUP_SLOPE` per unit of target (15% at 90%) and the freeze moves with it: the gates must
    travel further, and at 90% a 5% warm-up left them at an expected sparsity of 0.60 when the masks froze, so the
    exact-target cut closed every attention head (accuracy 0.466 / 0.125 / 0.125 on three seeds; with the 15%
    warm-up 0.509 / 0.518 / 0.487; at 50% the longer warm-up cost 2 points, so it starts above 50%).

    Gate and λ learning rates 0.5: with Adam a gate moves about ``gate_lr`` per step and λ about ``lagrangian_lr``,
    and at 0.1 / 0.01 the gates could not follow a 30-step warm-up (expected sparsity 0.06 when the target had
    reached 0.32: the exact-target cut at the freeze did all the pruning in one step). Measured, MiniLM at 50%,
    three seeds: 100 steps, short phases 0.492 (old rates, no reset: 0.455); 300 steps, long phases 0.560 (short
    phases at the old rates 0.550, at the fast rates 0.538; the two-stage pipeline 0.574). See docs/benchmarks.md.
    """

    dense: float | None = None
    warmup: float | None = None
    freeze: float | None = None
    gate_lr: float = 0.5
    lagrangian_lr: float = 0.5
    reset_optimizer_at_freeze: bool = True
    long_run: int = 200

    def fractions(self, max_steps: int, target_sparsity: float | None = None) -> tuple[float, float, float]:
        """``(dense, warmup, freeze)`` fractions for a run of ``max_steps`` towards ``target_sparsity`` (``None``:
        as for a target of at most 50%)."""
        if max_steps >= self.long_run:
            extra = HIGH_TARGET_WARMUP_SLOPE * max(0.0, (target_sparsity or 0.0) - 0.5)
            default = (0.3, round(0.05 + extra, 6), round(0.4 + extra, 6))  # 0.7 -> 0.1, not 0.0999...
        else:
            default = (0.1, 0.3, 0.5)
        chosen = (self.dense, self.warmup, self.freeze)
        return tuple(c if c is not None else d for c, d in zip(chosen, default))  # type: ignore[return-value]


#: Long runs: extra target warm-up (and later freeze), as a fraction of the run, per unit of target above 50%.
HIGH_TARGET_WARMUP_SLOPE = 0.25


#: The schedule :func:`l0` uses unless told otherwise.
L0_SCHEDULE = L0Schedule()

#: The phases of :class:`~lightning_prune.GradualConfig` under ``schedule="auto"``: dense 10% (Fisher scores), the
#: target reached over 20% with an exact mask at every step, frozen from 30% (the two-stage pipeline's cut) with a
#: fresh optimizer state. Measured at 300 steps (``benchmarks/quality.py``, issue #18; at 100 steps it trails
#: L0's short-run phases by 2.8 points, 0.464 vs 0.492): used at every length, but prefer ``L0Config`` for short
#: runs.
GRADUAL_SCHEDULE = L0Schedule(dense=0.1, warmup=0.2, freeze=0.3)

#: :class:`~lightning_prune.GradualConfig`'s phases when the model trains peft adapters (LoRA) on frozen weights:
#: dense 10% (Fisher scores through the adapters' gradients), the whole target at the first pruning step (no
#: warm-up), the masks frozen two steps later at 12% (at least two pruning steps), no optimizer reset (the adapters'
#: state is all there is). Why the whole target at once: the frozen base weights cannot take over what a removed
#: unit did, so pruning gradually buys nothing and costs steps under the final mask; measured on
#: ``benchmarks/llm_quality.py`` (SmolLM2-135M + LoRA, 50%, 50 steps, global widths), domain perplexity by target
#: warm-up: 40% of the steps 113.6, 10% 92.4, none 82.3 (LLM-Pruner 93.4). Why the early freeze: the adapters must
#: learn one architecture; with the scores learning (and the mask changing) until 75% of the run, 100 steps with
#: self-distillation gave domain / general perplexity 52.7 / 159.6 (3 seeds; LLM-Pruner 58.3 / 156.1), frozen at
#: 12% 39.1 / 109.8; the seed-to-seed spread (half-range over the mean) fell from 4.2% to 3.6% at 100 steps and
#: from 9.8% to 1.1% at 50 (issue #18, session 9).
GRADUAL_ADAPTER_SCHEDULE = L0Schedule(dense=0.1, warmup=0.0, freeze=0.12, reset_optimizer_at_freeze=False)

#: The schedule ``schedule="auto"`` uses per method name; other methods keep the manual defaults.
AUTO_SCHEDULES: dict[str, L0Schedule] = {"l0": L0_SCHEDULE, "gradual": GRADUAL_SCHEDULE}

#: Per method name, the schedule ``schedule="auto"`` uses instead when the model trains peft adapters.
ADAPTER_AUTO_SCHEDULES: dict[str, L0Schedule] = {"gradual": GRADUAL_ADAPTER_SCHEDULE}


def auto_schedule(method: str, adapters: bool = False) -> L0Schedule:
    """The phases ``schedule="auto"`` gives ``method`` (a key of :data:`AUTO_SCHEDULES`); ``adapters``: the model
    trains peft adapters (LoRA) on frozen weights, which has its own schedule for some methods."""
    if adapters and method in ADAPTER_AUTO_SCHEDULES:
        return ADAPTER_AUTO_SCHEDULES[method]
    return AUTO_SCHEDULES[method]


def phase_steps(
    max_steps: int, schedule: L0Schedule = L0_SCHEDULE, target_sparsity: float | None = None
) -> tuple[int, int, int]:
    """``(dense_steps, warmup_steps, freeze_after_steps)`` of ``schedule`` for a run of ``max_steps`` optimizer steps
    towards ``target_sparsity`` (see :meth:`L0Schedule.fractions`; at least one dense step, two pruning steps and a
    warm-up inside the pruning phase, of at least one step unless the schedule's warm-up fraction is 0).

    Raises:
        PruningConfigError: ``max_steps`` is too small for three phases (under 4 steps).
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 4:
        raise PruningConfigError(
            f"`max_steps` must be an int >= 4 (dense warm-up, pruning and frozen fine-tuning each need steps), got "
            f"{max_steps!r}."
        )
    dense_fraction, warmup_fraction, freeze_fraction = schedule.fractions(max_steps, target_sparsity)
    dense = max(1, int(max_steps * dense_fraction))
    freeze = max(dense + 2, int(max_steps * freeze_fraction))
    warmup = min(int(max_steps * warmup_fraction), freeze - dense)
    warmup = max(1, warmup) if warmup_fraction > 0 else 0  # 0: the whole target at the first pruning step
    return dense, warmup, freeze
