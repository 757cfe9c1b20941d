"""The phase schedule and per-batch sampling seeds shared by every training-loop integration.

Kept free of Lightning and of ``transformers`` so that :class:`~lightning_prune.PruningCallback` (Lightning)
and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainerCallback` (HF Trainer) follow exactly the
same schedule: ``dense`` for the first ``dense_steps`` optimizer steps, ``prune`` until ``freeze_after_steps``,
then ``frozen``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_prune.errors import PruningConfigError

PHASE_INDEX = {"dense": 0, "prune": 1, "frozen": 2}
#: Values of the integrations' ``schedule`` argument.
SCHEDULES = ("auto", "manual")


def is_int(value: Any) -> bool:
    """``True`` for an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def sampling_seed(seed: int, global_step: int, micro_batch: int) -> int:
    """A well-mixed 63-bit seed for the gate samples of one (micro-)batch, a pure function of its arguments.

    Exact resume and identical DDP ranks rely on it: the sample of a batch depends on nothing but the run's
    seed and the batch's position.
    """
    digest = hashlib.blake2b(f"{seed}:{global_step}:{micro_batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PhaseSchedule:
    """``dense`` → ``prune`` → ``frozen`` by optimizer step; a mixin for the integration callbacks.

    Subclasses call :meth:`_init_schedule` in ``__init__``; it validates and stores ``dense_steps``,
    ``freeze_after_steps`` and ``seed``.
    """

    dense_steps: int
    freeze_after_steps: int | None
    seed: int | None
    _pruner: Any
    _phase: str

    @property
    def pruner(self) -> Any:
        """The :class:`~lightning_prune.Pruner` this integration attached (``None`` before it did)."""
        return self._pruner

    @property
    def phase(self) -> str:
        """The current phase: ``"dense"``, ``"prune"`` or ``"frozen"``."""
        return self._phase

    def _init_schedule(self, dense_steps: int, freeze_after_steps: int | None, seed: int | None) -> None:
        if not is_int(dense_steps) or dense_steps < 0:
            raise PruningConfigError(f"`dense_steps` must be an int >= 0, got {dense_steps!r}.")
        if freeze_after_steps is not None and (not is_int(freeze_after_steps) or freeze_after_steps <= dense_steps):
            raise PruningConfigError(
                f"`freeze_after_steps` must be None or an int > `dense_steps`={dense_steps}, "
                f"got {freeze_after_steps!r}. "
                "HINT: it is a global step (counted from the start of training), not a number of pruning steps."
            )
        if seed is not None and not is_int(seed):
            raise PruningConfigError(f"`seed` must be an int or None, got {seed!r}.")
        self.dense_steps = dense_steps
        self.freeze_after_steps = freeze_after_steps
        self.seed = seed

    def _init_options(
        self,
        config: Any,
        export_dir: Any,
        dense_steps: int | None,
        freeze_after_steps: int | None,
        seed: int | None,
        adapter: Any,
        config_hint: str = "",
        schedule: str = "auto",
        reset_optimizer_at_freeze: bool | None = None,
        **flags: Any,
    ) -> None:
        """Validate and store the options every integration callback shares (``flags`` are booleans).

        ``schedule="auto"`` with none of ``dense_steps``, ``freeze_after_steps``, ``reset_optimizer_at_freeze``
        given (and an :class:`~lightning_prune.L0Config`): the phases come from :func:`lightning_prune.recipes.l0`
        for the run's length, resolved by :meth:`_resolve_schedule` once the length is known. Otherwise the values
        given, and for those left ``None`` the manual defaults (no dense phase, no freeze, no reset).
        """
        from lightning_prune.methods.base import PruningConfig  # local: keeps this module import-light

        if not isinstance(config, PruningConfig):
            raise PruningConfigError(
                f"`config` must be a PruningConfig such as lightning_prune.L0Config(target_sparsity=0.5), got "
                f"{type(config).__name__}.{config_hint}"
            )
        if export_dir is not None and not isinstance(export_dir, (str, os.PathLike)):
            raise PruningConfigError(f"`export_dir` must be a path or None, got {type(export_dir).__name__}.")
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
        #: ``True`` while the phases wait for the run's length (``schedule="auto"``, nothing given, an L0 config).
        self._auto_schedule = (
            schedule == "auto" and all(v is None for v in given) and getattr(config, "method_name", "") == "l0"
        )
        self.schedule = schedule
        self._init_schedule(0 if dense_steps is None else dense_steps, freeze_after_steps, seed)
        self.reset_optimizer_at_freeze = bool(reset_optimizer_at_freeze)
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise PruningConfigError(f"`{name}` must be True or False, got {value!r}.")
        if adapter is not None and not isinstance(adapter, str):
            raise PruningConfigError(f"`adapter` must be a registered adapter name or None, got {adapter!r}.")
        self.config = config
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.adapter = adapter
        for name, value in flags.items():
            setattr(self, name, value)

    def _resolve_schedule(self, total_steps: int | None, info: Callable[[str], None]) -> None:
        """``schedule="auto"``: set the phases, the fresh optimizer state at the freeze and (when the config's is 0)
        the target warm-up from :func:`lightning_prune.recipes.phase_steps` for a run of ``total_steps`` optimizer
        steps, before the gates are attached. Called by the integrations once the run's length is known; a run of
        unknown length (or under 4 steps) keeps the manual defaults and says so. Idempotent."""
        if not self._auto_schedule:
            return
        self._auto_schedule = False
        if total_steps is None or total_steps < 4:
            info(
                "lightning-prune: schedule='auto' needs the run's length in optimizer steps (`max_steps`, or a sized "
                f"dataloader), got {total_steps}; pruning runs from the first step to the end. Pass `dense_steps` and "
                "`freeze_after_steps` to set the phases."
            )
            return
        import copy  # local: keeps this module import-light

        from lightning_prune.phases import L0_SCHEDULE, phase_steps

        dense, warmup, freeze = phase_steps(int(total_steps), L0_SCHEDULE)
        self.dense_steps, self.freeze_after_steps = dense, freeze
        self.reset_optimizer_at_freeze = L0_SCHEDULE.reset_optimizer_at_freeze
        if self.config.warmup_steps == 0:
            config = copy.deepcopy(self.config)  # the user's object is left as it was
            config.warmup_steps = warmup
            self.config = config
        self._phase = "dense"
        info(
            f"lightning-prune: schedule 'auto' (lightning_prune.recipes.l0) for {total_steps} steps: dense {dense}, "
            f"target warm-up {self.config.warmup_steps}, masks frozen from step {freeze} with a fresh optimizer state. "
            "Pass `dense_steps`/`freeze_after_steps` or `schedule='manual'` to choose yourself."
        )

    #: How far (absolute sparsity) the gates' expected sparsity may trail the target when the masks freeze before
    #: :meth:`freeze_lag_warning` speaks.
    FREEZE_LAG = 0.1

    def freeze_lag_warning(self) -> str | None:
        """A warning when hard-concrete gates freeze far from the target (``None`` otherwise).

        The deterministic masks always meet the target exactly (the exact-target cut), so the progress bar's
        ``sparsity`` looks right even when the gates never closed; the expected sparsity tells whether the run
        learned which units to drop or the cut removed them in one step at the freeze (issue #18's diagnosis).
        """
        pruner = self._pruner
        if pruner is None or getattr(pruner.config, "gate_kind", None) != "hard_concrete":
            return None
        import torch  # local: keeps this module import-light

        with torch.no_grad():  # a number to report, not a graph (and no "requires_grad to scalar" warning)
            expected = float(pruner.expected_sparsity())
        target = float(pruner.current_target())
        if target - expected <= self.FREEZE_LAG:
            return None
        return (
            f"lightning-prune: the masks froze with the gates' expected sparsity at {expected:.2f} while the target is "
            f"{target:.2f}: the exact-target cut removed the missing {target - expected:.0%} in one step, so the run "
            "did not learn which units to drop. Raise `gate_lr` and `lagrangian_lr` (0.5 each in "
            "`lightning_prune.recipes.l0`), lengthen the pruning phase (`freeze_after_steps`) or shorten "
            "`warmup_steps`."
        )

    def _at_freeze(
        self, phase: str, global_step: int, warn: Callable[[str], None], info: Callable[[str], None]
    ) -> None:
        """What happens once, when the masks freeze (called on a phase change, before ``_phase`` moves on).

        At exactly step ``freeze_after_steps`` (a run resumed later does nothing again; one resumed at that step does
        what the uninterrupted run did): coming from ``prune``, warn when the gates lag the target
        (:meth:`freeze_lag_warning`) and let the method correct its mask (``config.on_freeze``); with
        ``reset_optimizer_at_freeze``, forget the optimizer state of the model's weights.
        """
        if phase != "frozen" or global_step != self.freeze_after_steps:
            return
        if self._phase == "prune":
            lag = self.freeze_lag_warning()
            if lag is not None:
                warn(lag)
            self._pruner.config.on_freeze(self._pruner)
        optimizer = getattr(self, "_optimizer", None)
        if getattr(self, "reset_optimizer_at_freeze", False) and optimizer is not None:
            from lightning_prune.integrations.optim import reset_model_state_  # local: keeps this module import-light

            cleared = reset_model_state_(optimizer, self._pruner)
            info(f"lightning-prune: masks frozen; optimizer state of {cleared} parameters reset")

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
