"""The framework-neutral training driver that every training-loop integration wraps.

:class:`TrainingDriver` holds what a pruning run needs from its training loop, whichever loop it is: the options
and their checks, the :class:`~lightning_prune.Pruner`, the phase schedule (its base
:class:`~lightning_prune.integrations.schedule.PhaseSchedule`), the phase and sampling seed of every batch, the
optimizer groups with their per-phase learning rates, the post-step, what happens when the masks freeze, the
statistics to log, the export with its directory checks and plot, and the record a checkpoint carries. An
integration translates its framework's hooks into these calls and adds what only its framework knows (where the
model is, how the loss comes back, barriers, loggers, checkpoint files): :class:`~lightning_prune.PruningCallback`
(Lightning) and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainerCallback` (HF ``Trainer``).
Nothing here imports Lightning or ``transformers``; a plain PyTorch loop drives it as well::

    driver = TrainingDriver(lp.L0Config(), export_dir="compact/", dense_steps=10, freeze_after_steps=80)
    driver.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    driver.hook_optimizer(optimizer)  # gate groups, their lr per phase, the post-step
    for step, batch in zip(range(100), loader):
        driver.start_batch(step)  # phase, pruning step, sampling seed
        (model(**batch).loss + driver.pruner.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
    driver.finish(100)  # the pruning step the export reads; a warning if the run never left the dense phase
    driver.export()  # compact model, report and plot into export_dir
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import ExportDirectoryError, PruningConfigError
from lightning_prune.export.io import export_dir_problem
from lightning_prune.integrations.fsdp import sharding_of
from lightning_prune.integrations.optim import (
    extend_schedulers_,
    regroup_optimizer_,
    reset_model_state_,
    set_group_learning_rates_,
)
from lightning_prune.integrations.resume import config_mismatch, gate_shapes, run_record
from lightning_prune.integrations.schedule import (
    PHASE_INDEX,
    PhaseSchedule,
    check_flag,
    freeze_lag_warning,
    is_int,
    sampling_seed,
)
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner import STATE_ATTRIBUTE, Pruner

log = logging.getLogger("lightning_prune")


_warn = functools.partial(warnings.warn, stacklevel=4)  # points at the caller of set_step / load_state_dict


class TrainingDriver(PhaseSchedule):
    """Phases, seeds, optimizer groups, post-step, statistics, export and resume records of one pruning run.

    Args:
        config: the method config, e.g. ``lightning_prune.L0Config(target_sparsity=0.5)``.
        export_dir: where :meth:`export` writes the compact model, its report and the kept-units plot (``None``: no
            export).
        dense_steps, freeze_after_steps, reset_optimizer_at_freeze, schedule: the phases (see
            :class:`~lightning_prune.integrations.schedule.PhaseSchedule`).
        seed: base seed of the gate samples (``None``: the default given to :meth:`use_seed`).
        adapter: force a registered model adapter by name.
        overwrite_export, plot, log_stats: replace a non-empty ``export_dir``; write the kept-units heatmap next to
            the export; log :meth:`log_stats_dict` (the integration does).
        config_hint, overwrite_hint: appended to the error for a ``config`` that is not a ``PruningConfig``; how the
            integration's user turns ``overwrite_export`` on (in export directory errors).
        info, warn: where progress messages (phase changes, the export, the ``"auto"`` schedule) and warnings (the
            freeze lag, a resumed ``dense_steps`` that differs) go.

    Raises:
        PruningConfigError: an argument is invalid (the message names it and shows the value).
    """

    #: How far (absolute sparsity) the gates' expected sparsity may trail the target when the masks freeze before
    #: :meth:`freeze_lag_warning` speaks.
    FREEZE_LAG = 0.1

    def __init__(
        self,
        config: PruningConfig,
        export_dir: str | Path | None = None,
        dense_steps: int | None = None,
        freeze_after_steps: int | None = None,
        seed: int | None = None,
        adapter: str | None = None,
        overwrite_export: bool = False,
        plot: bool = True,
        log_stats: bool = True,
        reset_optimizer_at_freeze: bool | None = None,
        schedule: str = "auto",
        *,
        config_hint: str = "",
        overwrite_hint: str = "`overwrite_export=True`",
        info: Callable[[str], None] = log.info,
        warn: Callable[[str], None] = _warn,
    ) -> None:
        if not isinstance(config, PruningConfig):
            raise PruningConfigError(
                f"`config` must be a PruningConfig such as lightning_prune.L0Config(target_sparsity=0.5), got "
                f"{type(config).__name__}.{config_hint}"
            )
        if export_dir is not None and not isinstance(export_dir, (str, os.PathLike)):
            raise PruningConfigError(f"`export_dir` must be a path or None, got {type(export_dir).__name__}.")
        super().__init__(config, dense_steps, freeze_after_steps, reset_optimizer_at_freeze, schedule)
        if seed is not None and not is_int(seed):
            raise PruningConfigError(f"`seed` must be an int or None, got {seed!r}.")
        for name, value in (("overwrite_export", overwrite_export), ("plot", plot), ("log_stats", log_stats)):
            check_flag(name, value)
        if adapter is not None and not isinstance(adapter, str):
            raise PruningConfigError(f"`adapter` must be a registered adapter name or None, got {adapter!r}.")
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.seed, self.adapter = seed, adapter
        self.overwrite_export, self.plot, self.log_stats = overwrite_export, plot, log_stats
        self.overwrite_hint, self.info, self.warn = overwrite_hint, info, warn
        self.global_step = 0  # the optimizer steps taken, as last told by the training loop
        self.base_seed = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self._pruner: Pruner | None = None
        self._phase = "dense" if self.dense_steps > 0 else "prune"
        self._micro = (-1, 0)  # (global step, forwards counted at that step) for start_batch(micro_batch=None)
        self._hooks: list[Any] = []

    @property
    def pruner(self) -> Pruner | None:
        """The :class:`~lightning_prune.Pruner` this driver attached (``None`` before it did)."""
        return self._pruner

    @property
    def phase(self) -> str:
        """The current phase: ``"dense"``, ``"prune"`` or ``"frozen"``."""
        return self._phase

    # -- attach ---------------------------------------------------------------------------------------------------
    def resolve_schedule(
        self, total_steps: int | None, info: Callable[[str], None] | None = None, model: nn.Module | None = None
    ) -> bool:
        """:meth:`.PhaseSchedule.resolve_schedule` (``info``: the driver's); once set, the run starts dense."""
        resolved = super().resolve_schedule(total_steps, info or self.info, model)
        if resolved:
            self._phase = "dense"
        return resolved

    def attached_to(self, model: nn.Module) -> bool:
        """Whether ``model`` carries this driver's gates already."""
        return self._pruner is not None and getattr(model, STATE_ATTRIBUTE, None) is self._pruner.state

    def attach(self, model: nn.Module, example_inputs: Any = None) -> Pruner:
        """Attach the gates to ``model`` (once: a model that carries this driver's gates gets the same pruner).

        Resolve a ``schedule="auto"`` (:meth:`resolve_schedule`) first: it may change ``config``.
        """
        if not self.attached_to(model):
            self._pruner = Pruner(model, self.config, adapter=self.adapter, example_inputs=example_inputs)
        return self._pruner

    def use_seed(self, default: int) -> None:
        """The base seed of the gate samples: ``seed`` if given, else ``default`` (the framework's run seed)."""
        self.base_seed = self.seed if self.seed is not None else int(default)

    # -- phases and seeds -----------------------------------------------------------------------------------------
    def set_step(self, global_step: int) -> None:
        """Phase, ``pruner.pruning_step`` and our groups' lr for the optimizer step ``global_step``; on a phase change,
        the importance init of the gates as the dense phase ends, and the freeze (:meth:`_at_freeze`)."""
        phase = self.phase_at(global_step)
        if phase != self._phase:
            self.info(f"lightning-prune: phase '{self._phase}' -> '{phase}' at global step {global_step}")
            if self._phase == "dense":  # the dense warm-up's importance scores set the gates (init_from_importance)
                self._pruner.maybe_init_gates_from_importance_()
            self._at_freeze(phase, global_step)
        self._phase = phase
        self.global_step = global_step
        # `requires_grad` stays on (unlike `Pruner.set_phase`): a zero lr stops the gates, and DDP keeps seeing
        # them used (the penalty is 0·Σ gates outside the prune phase).
        self._pruner.phase = phase
        self._pruner.pruning_step = self.pruning_step_at(global_step)
        self.set_learning_rates()

    def start_batch(self, global_step: int, micro_batch: int | None = None) -> None:
        """:meth:`set_step` and a sampling seed before a training forward pass.

        ``micro_batch``: the batch's index within the optimizer step (gradient accumulation); ``None`` counts the
        forwards seen at ``global_step``. The seed depends on the run's seed and the batch's position only, so a
        resumed run and every data-parallel rank draw the same masks.
        """
        if micro_batch is None:
            step, seen = self._micro
            micro_batch = seen if step == global_step else 0
            self._micro = (global_step, micro_batch + 1)
        self.set_step(global_step)
        self._pruner.sample_seed = sampling_seed(self.base_seed, global_step, micro_batch)

    def _at_freeze(self, phase: str, global_step: int) -> None:
        """What happens once, when the masks freeze (called on a phase change, before ``phase`` moves on).

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
                self.warn(lag)
            self._pruner.config.on_freeze(self._pruner)
        if self.reset_optimizer_at_freeze and self.optimizer is not None:
            cleared = reset_model_state_(self.optimizer, self._pruner)
            self.info(f"lightning-prune: masks frozen; optimizer state of {cleared} parameters reset")

    def freeze_lag_warning(self) -> str | None:
        """:func:`~lightning_prune.integrations.schedule.freeze_lag_warning` for this run (``FREEZE_LAG``)."""
        return None if self._pruner is None else freeze_lag_warning(self._pruner, self.FREEZE_LAG)

    # -- optimizer ------------------------------------------------------------------------------------------------
    def hook_optimizer(self, optimizer: torch.optim.Optimizer, schedulers: Iterable[Any] = ()) -> None:
        """Move gates and multipliers into their own groups and keep their lr and clamping right at every step.

        ``schedulers``: learning-rate schedulers already built on ``optimizer``; they get entries for the new groups.
        A step pre-hook sets our groups' lr (what a scheduler wrote there after the previous step is undone), a
        post-hook clamps the gates. The same optimizer again is a no-op.
        """
        if optimizer is self.optimizer:
            return
        groups_before, source = regroup_optimizer_(optimizer, self._pruner)
        extend_schedulers_(list(schedulers), groups_before, source, len(optimizer.param_groups) - groups_before)
        self.release()  # the hooks of a previous optimizer (samples are seeded again at every batch)
        self._hooks = [
            optimizer.register_step_pre_hook(self.set_learning_rates),
            optimizer.register_step_post_hook(self.after_optimizer_step),
        ]
        self.optimizer = optimizer
        self.set_learning_rates()

    def set_learning_rates(self, *_: Any) -> None:
        """Our groups' lr: ``gate_lr`` / ``lagrangian_lr`` in the ``prune`` phase, 0 otherwise (a step pre-hook)."""
        if self.optimizer is not None:
            set_group_learning_rates_(self.optimizer, self._pruner, self._phase == "prune")

    def after_optimizer_step(self, *_: Any) -> None:
        """The post-step: clamp the gates (``pruner.pruning_step`` follows the global step in :meth:`set_step`)."""
        with torch.no_grad():
            for gate in self._pruner.gates.values():
                gate.post_step_()

    def release(self) -> None:
        """Remove the optimizer hooks and forget the optimizer and the sampling seed (end of a run)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.optimizer = None
        if self._pruner is not None:
            self._pruner.sample_seed = None

    # -- statistics -----------------------------------------------------------------------------------------------
    def statistics(self) -> dict[str, float]:
        """``pruner.stats()`` and the phase's index (dense 0, prune 1, frozen 2)."""
        stats = self._pruner.stats()
        stats["phase"] = PHASE_INDEX[self._phase]
        return stats

    def log_stats_dict(self, stats: Mapping[str, float] | None = None) -> dict[str, float]:
        """:meth:`statistics` (or ``stats`` computed by it) as floats under ``pruning/``."""
        stats = self.statistics() if stats is None else stats
        return {f"pruning/{k}": float(v) for k, v in stats.items()}

    # -- export ---------------------------------------------------------------------------------------------------
    def export_dir_problem(self, directory: str | Path | None = None, overwrite: bool | None = None) -> str | None:
        """Why ``directory`` (default ``export_dir``) cannot receive the export (``None``: it can, or there is none)."""
        target = self.export_dir if directory is None else directory
        overwrite = self.overwrite_export if overwrite is None else overwrite
        return None if target is None else export_dir_problem(target, overwrite, self.overwrite_hint)

    def check_export_dir(self, directory: str | Path | None = None, overwrite: bool | None = None) -> None:
        """Raise :class:`~lightning_prune.errors.ExportDirectoryError` for :meth:`export_dir_problem`'s reason."""
        problem = self.export_dir_problem(directory, overwrite)
        if problem is not None:
            raise ExportDirectoryError(problem)

    def finish(self, global_step: int) -> str | None:
        """End of training after ``global_step`` optimizer steps: stop sampling and set the pruning step the export
        reads. A run that reached ``freeze_after_steps`` from the ``prune`` phase freezes first (lag warning,
        ``config.on_freeze``), even when no frozen step followed, so every integration exports the same masks.
        Returns a warning when the run ended in the dense phase (its export is the dense model)."""
        if self._phase == "prune" and self.phase_at(global_step) == "frozen":
            self.set_step(global_step)
        self.global_step = global_step
        self._pruner.sample_seed = None
        self._pruner.pruning_step = self.pruning_step_at(global_step)
        if self._phase != "dense":
            return None
        return (
            f"lightning-prune: training ended in the dense phase (global step {global_step} <= "
            f"dense_steps={self.dense_steps}); the gates never trained, so the export is the dense model."
        )

    def export(
        self, is_main: bool = True, rescue: Callable[[Exception], Exception] | None = None
    ) -> tuple[Path | None, Exception | None]:
        """Write the compact model, its report and (with ``plot``) the kept-units plot to ``export_dir``.

        Every process calls it: a model sharded by :func:`~lightning_prune.integrations.fsdp.shard_` is gathered by
        every rank (a failure raises on each); otherwise only the main process (``is_main``) exports. ``rescue``
        turns an export error into the error to report (after saving what was trained; ``None``: raise it).
        Returns ``(the plot's path or None, the error rescue returned or None)``.
        """
        if self.export_dir is None:
            return None, None
        sharded = sharding_of(self._pruner)
        if sharded is not None:  # FSDP2: every rank gathers, rank 0 writes
            sharded.save_compact(self.export_dir, overwrite=self.overwrite_export)
        if not is_main:
            return None, None
        try:
            if sharded is None:
                self._pruner.save_compact(self.export_dir, overwrite=self.overwrite_export)
        except Exception as error:  # the run is not lost: the integration keeps what was trained
            if rescue is None:
                raise
            return None, rescue(error)
        self.info(f"lightning-prune: exported to {self.export_dir}: {self._pruner.last_report.summary()}")
        return (self.write_plot(self.export_dir) if self.plot else None), None

    def export_to(self, directory: str | Path, overwrite: bool, global_step: int) -> Path:
        """Export a run restored after ``global_step`` steps (e.g. a checkpoint) in its last step's phase."""
        self._pruner.phase = self.phase_at(max(global_step - 1, 0))  # the phase of the last step taken
        self._pruner.pruning_step = self.pruning_step_at(global_step)
        self._pruner.save_compact(directory, overwrite=overwrite)
        if self.plot:
            self.write_plot(directory)
        return Path(directory)

    def write_plot(self, directory: str | Path) -> Path:
        """Write the kept-units heatmap into ``directory``; returns its path."""
        from lightning_prune.integrations.plots import PLOT_FILENAME, save_pruner_plot

        return save_pruner_plot(self._pruner, Path(directory) / PLOT_FILENAME)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def resume_record(self) -> dict[str, Any]:
        """What a checkpoint stores to be checked on resume: the config, the gate shapes, their fingerprint and the
        phase steps (:func:`~lightning_prune.integrations.resume.run_record`)."""
        record = run_record(self.config, gate_shapes(self._pruner))
        record.update(version=1, dense_steps=self.dense_steps, freeze_after_steps=self.freeze_after_steps)
        return record

    def check_record(self, saved: Mapping[str, Any], fresh_start: str) -> None:
        """Refuse a checkpoint whose record (``saved``) comes from another pruning config or other gates.

        Raises:
            PruningConfigError: the message lists the differences and says how to start afresh (``fresh_start``).
        """
        shapes = gate_shapes(self._pruner) if self._pruner is not None else {}
        problem = config_mismatch(saved, self.config, shapes, fresh_start)
        if problem is not None:
            raise PruningConfigError(problem)

    def state_dict(self) -> dict[str, Any]:
        """The run's resumable state: phase, global step, seed, phase steps, config (and, once attached, the pruning
        step and the :meth:`resume_record`)."""
        state: dict[str, Any] = {"version": 1, "phase": self._phase, "global_step": self.global_step}
        state.update(dense_steps=self.dense_steps, freeze_after_steps=self.freeze_after_steps, seed=self.base_seed)
        state["config"] = self.config.to_dict()
        if self._pruner is not None:
            state.update(self.resume_record(), pruning_step=self.pruning_step_at(self.global_step))
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (older checkpoints' missing keys keep the current values)."""
        self._phase = state_dict.get("phase", self._phase)
        self.global_step = int(state_dict.get("global_step", self.global_step))
        if self.seed is None:  # keep the seed of the interrupted run so its samples continue exactly
            self.base_seed = int(state_dict.get("seed", self.base_seed))
        if state_dict.get("dense_steps", self.dense_steps) != self.dense_steps:
            self.warn(
                f"lightning-prune: the checkpoint was trained with dense_steps={state_dict['dense_steps']}, this "
                f"run uses {self.dense_steps}; phases follow the new value."
            )
