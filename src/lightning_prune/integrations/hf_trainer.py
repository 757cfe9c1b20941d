"""Hugging Face ``transformers.Trainer`` integration: the same pruning configs without Lightning.

Two pieces work together:

- :class:`PruningTrainerCallback` holds the pruning settings (config, phases, export) in its
  :class:`~lightning_prune.integrations.driver.TrainingDriver` (``callback.driver``, shared with the Lightning
  callback), which owns the :class:`~lightning_prune.Pruner`; as a ``TrainerCallback`` it sets the phase at the start
  of training and of every step, and exports the compact model, its report and the kept-units heatmap when training
  ends (main process only).
- :class:`PruningTrainer` (a ``transformers.Trainer``) attaches the gates in ``__init__`` (before the
  optimizer exists), adds ``pruner.penalty()`` to the training loss in ``compute_loss``, puts gates and
  Lagrange multipliers into their own optimizer groups in ``create_optimizer`` and adds the pruning
  statistics to the Trainer's training logs under ``pruning/``.

Phases follow ``state.global_step`` exactly as with :class:`~lightning_prune.PruningCallback`: ``dense`` for
the first ``dense_steps`` optimizer steps, ``prune`` until ``freeze_after_steps``, then ``frozen``;
``pruner.pruning_step`` is ``global_step - dense_steps`` (capped at the freeze), so a run resumed from a
Trainer checkpoint (which carries the gates in the model's state dict) continues on the same schedule.

Learning-rate schedule: the Trainer's scheduler is built over every group, ours included, but the gate and
multiplier groups are set back to ``config.gate_lr`` / ``config.lagrangian_lr`` (0 outside the ``prune``
phase) right before every optimizer step, so warm-up and decay apply to the model's groups only. The
``learning_rate`` the Trainer logs is the first (model) group's.

Nothing here imports Lightning.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from typing_extensions import Unpack

from lightning_prune.errors import PruningConfigError
from lightning_prune.integrations.facade import DriverFacade, RunOptions, documents_run_options
from lightning_prune.integrations.resume import RESUME_STATE_FILENAME, read_resume_record, write_resume_record
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner import STATE_ATTRIBUTE, Pruner

log = logging.getLogger("lightning_prune")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=5)


@documents_run_options
class PruningTrainerCallback(transformers.TrainerCallback, DriverFacade):
    """Pruning settings, phases and export for a :class:`PruningTrainer`.

    Pass it in ``callbacks=[...]`` of a :class:`PruningTrainer` (a plain ``transformers.Trainer`` cannot add the
    penalty or the optimizer groups; training with one raises at ``on_train_begin``). Training goes through up
    to three phases, counted in optimizer steps (``state.global_step``):

    1. ``dense``: the first ``dense_steps`` steps run without masks (gates and multipliers have lr 0);
    2. ``prune``: masks are sampled and the penalty drives the expected sparsity to the target
       (``config.warmup_steps`` ramps the target from 0, counted from the end of the dense phase);
    3. ``frozen`` (from step ``freeze_after_steps`` on, if given): deterministic masks, gates and multipliers
       no longer move, so the model fine-tunes with its final architecture.

    ``callback.driver`` is the :class:`~lightning_prune.integrations.driver.TrainingDriver` behind it (the same as
    :class:`~lightning_prune.PruningCallback`'s); the options below read and write its values.

    The arguments after ``export_dir`` are keyword-only.

    Args:
        config: the method config, e.g. ``lightning_prune.L0Config(target_sparsity=0.5)``.
        export_dir: where the main process writes the compact model, ``lightning_prune_report.json`` and
            ``kept_units.png`` when training ends; ``None`` exports nothing. Checked when the trainer is built:
            it must be writable and empty (or absent) unless ``overwrite_export=True``.
        {run_options}

    Raises:
        PruningConfigError: an argument is invalid.

    Example::

        import lightning_prune as lp
        from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

        callback = PruningTrainerCallback(
            lp.L0Config(target_sparsity=0.4, structures=("heads", "ffn"), warmup_steps=200),
            export_dir="compact/", dense_steps=50, freeze_after_steps=800,
        )
        trainer = PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train()
        compact = lp.load_compact("compact/")
    """

    def __init__(
        self, config: PruningConfig, export_dir: str | Path | None = None, **options: Unpack[RunOptions]
    ) -> None:
        overwrite_hint = "PruningTrainerCallback(..., overwrite_export=True)"
        super().__init__(config, export_dir, options, overwrite_hint=overwrite_hint, info=log.info, warn=_warn)

    # -- wiring (called by PruningTrainer) -------------------------------------------------------------
    def attach(self, model: nn.Module, base_seed: int = 0, total_steps: int | None = None) -> Pruner:
        """Attach the gates to ``model`` (once; later calls with the same model return the same pruner).

        ``total_steps``: the run's optimizer steps, for ``schedule="auto"`` (``None``: unknown)."""
        if self.driver.attached_to(model):
            return self.pruner
        self.driver.resolve_schedule(total_steps, model=model)
        pruner = self.driver.attach(model)
        self.driver.use_seed(base_seed)
        self.set_step(0)
        return pruner

    def check_export_dir(self) -> None:
        """Raise :class:`~lightning_prune.errors.ExportDirectoryError` if ``export_dir`` cannot receive the export."""
        self.driver.check_export_dir()

    def write_resume_record(self, checkpoint_dir: str | Path) -> None:
        """Write the config record (:func:`~lightning_prune.integrations.resume.run_record`) into a checkpoint
        directory, for :meth:`check_resume`."""
        write_resume_record(checkpoint_dir, self.driver.resume_record())

    def check_resume(self, checkpoint_dir: str | Path) -> None:
        """Refuse to resume from ``checkpoint_dir`` if it was written with another pruning config or without gates,
        exactly as :class:`~lightning_prune.PruningCallback` refuses such a Lightning checkpoint.

        Raises:
            PruningConfigError: the message lists the differing config fields (or says the gates are missing).
        """
        saved, keys = read_resume_record(checkpoint_dir)
        if saved is not None:
            self.driver.check_record(saved, "without `resume_from_checkpoint`")
            return
        if keys is not None and not any(STATE_ATTRIBUTE in k.split(".") for k in keys):
            raise PruningConfigError(
                f"The checkpoint {str(checkpoint_dir)!r} has no pruning gates (no `{STATE_ATTRIBUTE}` weights and no "
                f"{RESUME_STATE_FILENAME}): it was not written by a PruningTrainer. To prune from a dense checkpoint, "
                "load its weights into the model before building the PruningTrainer (e.g. `from_pretrained`) instead "
                "of passing `resume_from_checkpoint`."
            )
        log.warning(
            "lightning-prune: %s has no %s (written by an older lightning-prune or without PruningTrainer), so its "
            "pruning config cannot be compared with this run's; make sure it is the same.",
            checkpoint_dir,
            RESUME_STATE_FILENAME,
        )

    def hook_optimizer(self, optimizer: torch.optim.Optimizer, lr_scheduler: Any = None) -> None:
        """Move gates and multipliers into their own groups and keep their lr and clamping right at every step.

        ``lr_scheduler`` is a scheduler that already exists (one the user passed to the Trainer); it gets
        entries for the new groups.
        """
        self.driver.hook_optimizer(optimizer, [lr_scheduler] if lr_scheduler is not None else [])

    def set_step(self, global_step: int) -> None:
        """Set the phase and ``pruner.pruning_step`` for the optimizer step ``global_step``."""
        self.driver.set_step(global_step)

    def before_training_forward(self, global_step: int) -> None:
        """Phase and a per-micro-batch sampling seed before a training forward pass."""
        self.driver.start_batch(global_step)

    # -- TrainerCallback hooks -------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if self.pruner is None or self.driver.optimizer is None:
            raise PruningConfigError(
                "PruningTrainerCallback needs a lightning_prune.integrations.hf_trainer.PruningTrainer (it adds the "
                "penalty to the loss and the gate groups to the optimizer); a plain transformers.Trainer cannot. "
                "Replace `Trainer(...)` by `PruningTrainer(...)` with the same arguments."
            )
        warning = self.schedule_warning(state.max_steps, "max_steps")
        if warning is not None and state.is_world_process_zero:
            log.warning(warning)
        self.set_step(state.global_step)  # after a resume the global step is known only now
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self.set_step(state.global_step)  # before other callbacks' `on_step_begin` see the state
        return control

    def on_train_end(self, args, state, control, **kwargs):
        warning = self.driver.finish(state.global_step)
        if warning is not None:
            log.warning(warning)
        self.driver.export(state.is_world_process_zero)
        return control


class PruningTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that prunes with the :class:`PruningTrainerCallback` in its ``callbacks``.

    Takes the Trainer's arguments unchanged. In ``__init__`` it attaches the gates to ``model`` (apply peft's
    ``get_peft_model`` before building the trainer) and checks the export directory. During training it adds the
    pruning penalty to the loss (scaled for gradient accumulation like the loss), gives gates and multipliers
    their own optimizer groups (``config.gate_lr`` / ``config.lagrangian_lr``, weight decay 0, pinned against
    the lr scheduler), clamps the gates after every optimizer step, and adds ``pruning/*`` statistics to the
    training logs. Evaluation losses carry no penalty. The callback exports at the end of ``train()``; all
    processes wait for it.

    Raises:
        PruningConfigError: no (or more than one) :class:`PruningTrainerCallback`, ``model_init`` is used, or
            ``export_dir`` is not usable.

    Example::

        trainer = PruningTrainer(model=model, args=args, train_dataset=data,
                                 callbacks=[PruningTrainerCallback(lp.L0Config(target_sparsity=0.4))])
        trainer.train()
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = [c for c in self.callback_handler.callbacks if isinstance(c, PruningTrainerCallback)]
        if len(found) != 1:
            raise PruningConfigError(
                f"PruningTrainer needs exactly one PruningTrainerCallback in `callbacks`, got {len(found)}. "
                "Pass `callbacks=[PruningTrainerCallback(config, export_dir=...)]`."
            )
        if self.model_init is not None:
            raise PruningConfigError(
                "PruningTrainer does not support `model_init` (the gates are attached to the model given in `model=`, "
                "and `model_init` would replace it). Pass `model=` instead."
            )
        self.pruning_callback: PruningTrainerCallback = found[0]
        if self.args.process_index == 0:
            self.pruning_callback.check_export_dir()
        auto = self.pruning_callback.driver.awaits_run_length  # sizing may build the dataloader: only when needed
        total_steps = self._known_total_steps() if auto else None
        self.pruning_callback.attach(self.model, base_seed=self.args.seed, total_steps=total_steps)

    def _known_total_steps(self) -> int | None:
        """The run's optimizer steps when known before training: ``max_steps``, or epochs × batches / accumulation
        (the Trainer's own arithmetic for a sized dataset); ``None`` otherwise."""
        args = self.args
        if args.max_steps is not None and args.max_steps > 0:
            return int(args.max_steps)
        try:
            batches = len(self.get_train_dataloader())
        except Exception:  # no dataset, or one without a length: unknown
            return None
        per_epoch = max(1, batches // max(1, args.gradient_accumulation_steps))
        return int(math.ceil(args.num_train_epochs * per_epoch))

    @property
    def pruner(self) -> Pruner:
        """The attached :class:`~lightning_prune.Pruner`."""
        return self.pruning_callback.pruner

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        # a user's (optimizer, scheduler) pair was built before our groups exist: give its scheduler entries
        self.pruning_callback.hook_optimizer(optimizer, self.lr_scheduler)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if training:
            self.pruning_callback.before_training_forward(self.state.global_step)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not training:
            return out
        loss, outputs = out if return_outputs else (out, None)
        self.pruner.check_loss(loss, "training loss", self.state.global_step)
        penalty = self.pruner.penalty().to(loss.dtype)
        # `training_step` divides the loss by the accumulation steps unless it is already normalised over the whole
        # accumulated batch; the penalty must count once per optimizer step either way
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        if scaled:
            penalty = penalty / self.current_gradient_accumulation_steps
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.pruning_callback.log_stats and self.pruner is not None:  # a training log
            logs = {**logs, **self.pruning_callback.log_stats_dict()}
        super().log(logs, start_time)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # next to the weights: `train(resume_from_checkpoint=...)` checks it
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if folder.is_dir():
                self.pruning_callback.write_resume_record(folder)

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``; a ``resume_from_checkpoint`` written with another pruning config (or without gates) is
        refused before anything is loaded (:meth:`PruningTrainerCallback.check_resume`)."""
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if isinstance(resume, bool) and resume:
            resume = get_last_checkpoint(self.args.output_dir)  # None: the Trainer says there is none
        if isinstance(resume, (str, os.PathLike)):
            self.pruning_callback.check_resume(resume)
        output = super().train(*args, **kwargs)
        self.accelerator.wait_for_everyone()  # no process returns before the main one has exported
        return output
