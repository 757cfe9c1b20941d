"""The phase schedule and per-batch sampling seeds shared by every training-loop integration.

:class:`PhaseSchedule` is the arithmetic half of :class:`~lightning_prune.integrations.driver.TrainingDriver`
(which every integration wraps): ``dense`` for the first ``dense_steps`` optimizer steps, ``prune`` until
``freeze_after_steps``, then ``frozen``, and the ``schedule="auto"`` resolution of those steps from the run's
length. It holds no pruner, no optimizer and imports neither Lightning nor ``transformers``. What the freeze says
when the gates lag the target is :func:`freeze_lag_warning`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from lightning_prune.pruner import Pruner

PHASE_INDEX = {"dense": 0, "prune": 1, "frozen": 2}
#: Values of the integrations' ``schedule`` argument.
SCHEDULES = ("auto", "manual")


def is_int(value: Any) -> bool:
    """``True`` for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_flag(name: str, value: Any) -> None:
    """Raise :class:`~lightning_prune.errors.PruningConfigError` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise PruningConfigError(f"`{name}` must be True or False, got {value!r}.")


def sampling_seed(seed: int, global_step: int, micro_batch: int) -> int:
    """A well-mixed 63-bit seed for the gate samples of one (micro-)batch, a pure function of its arguments.

    Exact resume and identical DDP ranks rely on it: the sample of a batch depends on nothing but the run's
    seed and the batch's position.
    """
    digest = hashlib.blake2b(f"{seed}:{global_step}:{micro_batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PhaseSchedule:
    """``dense`` → ``prune`` → ``frozen`` by optimizer step, from validated phase arguments.

    ``schedule="auto"`` with none of ``dense_steps``, ``freeze_after_steps``, ``reset_optimizer_at_freeze`` given
    (and an :class:`~lightning_prune.L0Config`): the phases come from :func:`lightning_prune.recipes.l0` for the
    run's length, set by :meth:`resolve_schedule` once the length is known. Otherwise the values given, and for
    those left ``None`` the manual defaults (no dense phase, no freeze, no reset).

    Args:
        config: the method config (already checked to be a ``PruningConfig``); ``"auto"`` may replace it by a copy
            with the recipe's ``warmup_steps``.
        dense_steps: optimizer steps trained without masks (``None``: 0, or the ``"auto"`` schedule's).
        freeze_after_steps: global step from which the masks are frozen (``None``: never, or the ``"auto"``
            schedule's).
        reset_optimizer_at_freeze: forget the model's optimizer state when the masks freeze (``None``: off, or on
            under ``"auto"``).
        schedule: ``"auto"`` or ``"manual"``.

    Raises:
        PruningConfigError: an argument is invalid.
    """

    def __init__(
        self,
        config: Any,
        dense_steps: int | None = None,
        freeze_after_steps: int | None = None,
        reset_optimizer_at_freeze: bool | None = None,
        schedule: str = "auto",
    ) -> None:
        if schedule not in SCHEDULES:
            raise PruningConfigError(
                f"`schedule` must be one of {SCHEDULES}, got {schedule!r}: 'auto' derives the phases from the run's "
                "length (lightning_prune.recipes.l0) unless you give them; 'manual' uses the values given."
            )
        if reset_optimizer_at_freeze is not None and not isinstance(reset_optimizer_at_freeze, bool):
            raise PruningConfigError(
                f"`reset_optimizer_at_freeze` must be True, False or None, got {reset_optimizer_at_freeze!r}."
            )
        given = (dense_steps, freeze_after_steps, reset_optimizer_at_freeze)
        from lightning_prune.phases import AUTO_SCHEDULES  # local: keeps this module import-light

        #: ``True`` while the phases wait for the run's length (``schedule="auto"``, nothing given, a method with an
        #: auto schedule: L0, gradual).
        self._auto_schedule = (
            schedule == "auto"
            and all(v is None for v in given)
            and getattr(config, "method_name", "") in AUTO_SCHEDULES
        )
        dense_steps = 0 if dense_steps is None else dense_steps
        if not is_int(dense_steps) or dense_steps < 0:
            raise PruningConfigError(f"`dense_steps` must be an int >= 0, got {dense_steps!r}.")
        if freeze_after_steps is not None and (not is_int(freeze_after_steps) or freeze_after_steps <= dense_steps):
            raise PruningConfigError(
                f"`freeze_after_steps` must be None or an int > `dense_steps`={dense_steps}, "
                f"got {freeze_after_steps!r}. "
                "HINT: it is a global step (counted from the start of training), not a number of pruning steps."
            )
        self.config = config
        self.schedule = schedule
        self.dense_steps = dense_steps
        self.freeze_after_steps = freeze_after_steps
        self.reset_optimizer_at_freeze = bool(reset_optimizer_at_freeze)

    @property
    def awaits_run_length(self) -> bool:
        """``True`` while a ``schedule="auto"`` waits for the run's length (:meth:`resolve_schedule`): integrations
        size the run only then (sizing may build the training dataloader)."""
        return self._auto_schedule

    def resolve_schedule(
        self, total_steps: int | None, info: Callable[[str], None], model: nn.Module | None = None
    ) -> bool:
        """``schedule="auto"``: set the phases, the fresh optimizer state at the freeze and (when the config's is 0)
        the target warm-up from :func:`lightning_prune.recipes.phase_steps` for a run of ``total_steps`` optimizer
        steps, before the gates are attached. Called once the run's length is known; a run of unknown length (or
        under 4 steps) keeps the manual defaults and says so through ``info``. Idempotent. ``model``: the model to be
        pruned; when it trains peft adapters, :func:`lightning_prune.phases.auto_schedule` may pick their phases.

        Returns:
            ``True`` when the recipe's phases were set now.
        """
        if not self._auto_schedule:
            return False
        self._auto_schedule = False
        if total_steps is None or total_steps < 4:
            info(
                "lightning-prune: schedule='auto' needs the run's length in optimizer steps (`max_steps`, or a sized "
                f"dataloader), got {total_steps}; pruning runs from the first step to the end. Pass `dense_steps` and "
                "`freeze_after_steps` to set the phases."
            )
            return False
        import copy  # local: keeps this module import-light

        from lightning_prune.peft_tuners import tuner_layers
        from lightning_prune.phases import AUTO_SCHEDULES, auto_schedule, phase_steps

        recipe = auto_schedule(self.config.method_name, adapters=model is not None and bool(tuner_layers(model)))
        for_adapters = recipe is not AUTO_SCHEDULES[self.config.method_name]
        dense, warmup, freeze = phase_steps(int(total_steps), recipe, self.config.target_sparsity)
        self.dense_steps, self.freeze_after_steps = dense, freeze
        self.reset_optimizer_at_freeze = recipe.reset_optimizer_at_freeze
        if self.config.warmup_steps == 0:
            config = copy.deepcopy(self.config)  # the user's object is left as it was
            config.warmup_steps = warmup
            self.config = config
        info(
            f"lightning-prune: schedule 'auto' ({self.config.method_name}) for {total_steps} steps: dense {dense}, "
            f"target warm-up {self.config.warmup_steps}, masks frozen from step {freeze}"
            f"{' with a fresh optimizer state' if self.reset_optimizer_at_freeze else ''}"
            f"{' (peft adapters: their schedule)' if for_adapters else ''}. "
            "Pass `dense_steps`/`freeze_after_steps` or `schedule='manual'` to choose yourself."
        )
        return True

    def schedule_warning(self, total_steps: int | None, where: str = "max_steps") -> str | None:
        """A warning for a run whose last step falls inside the dense warm-up (``None`` when it reaches pruning).

        Such a run trains no gate and exports the dense model. It is not refused: training in chunks (stop at
        step 2, resume with a larger ``max_steps``) is legitimate. ``total_steps``: the run's optimizer steps
        when they are known in advance (``None`` or ``<= 0``: unknown).
        """
        if total_steps is None or total_steps <= 0 or total_steps > self.dense_steps:
            return None
        return (
            f"lightning-prune: this run ends before pruning starts (`{where}`={total_steps} <= "
            f"`dense_steps`={self.dense_steps}): the gates will not train and the export will be the dense model. "
            f"Lower `dense_steps` (e.g. to {max(0, total_steps // 10)}) or train for more steps to prune."
        )

    def phase_at(self, global_step: int) -> str:
        """The phase of the optimizer step ``global_step`` (0-based)."""
        if global_step < self.dense_steps:
            return "dense"
        if self.freeze_after_steps is not None and global_step >= self.freeze_after_steps:
            return "frozen"
        return "prune"

    def pruning_step_at(self, global_step: int) -> int:
        """Pruning steps taken before ``global_step``: it drives the target warm-up and stops when frozen."""
        end = global_step if self.freeze_after_steps is None else min(global_step, self.freeze_after_steps)
        return max(0, end - self.dense_steps)


def freeze_lag_warning(pruner: Pruner, lag: float) -> str | None:
    """A warning when hard-concrete gates freeze more than ``lag`` (absolute sparsity) short of the target.

    The deterministic masks always meet the target exactly (the exact-target cut), so the progress bar's
    ``sparsity`` looks right even when the gates never closed; the expected sparsity tells whether the run
    learned which units to drop or the cut removed them in one step at the freeze (issue #18's diagnosis).
    """
    if getattr(pruner.config, "gate_kind", None) != "hard_concrete":
        return None
    with torch.no_grad():  # a number to report, not a graph (and no "requires_grad to scalar" warning)
        expected = float(pruner.expected_sparsity())
    target = float(pruner.current_target())
    if target - expected <= lag:
        return None
    return (
        f"lightning-prune: the masks froze with the gates' expected sparsity at {expected:.2f} while the target is "
        f"{target:.2f}: the exact-target cut removed the missing {target - expected:.0%} in one step, so the run "
        "did not learn which units to drop. Raise `gate_lr` and `lagrangian_lr` (0.5 each in "
        "`lightning_prune.recipes.l0`), lengthen the pruning phase (`freeze_after_steps`) or shorten "
        "`warmup_steps`."
    )
