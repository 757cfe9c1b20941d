"""Lightning integration: :class:`PruningCallback` prunes while a ``Trainer`` fits, with no change to the module.

The callback translates Lightning's hooks into calls of its
:class:`~lightning_prune.integrations.driver.TrainingDriver` (``callback.driver``), which holds the schedule, the
pruner, the optimizer groups, the statistics, the export and the checkpoint record. Hook by hook:

- ``setup``: finds the model inside the ``LightningModule`` (see :func:`find_model`), attaches the gates
  (before ``configure_optimizers`` and before DDP wraps the module, so DDP all-reduces the gate gradients
  and checkpoints carry them), checks ``export_dir``, and wraps the module's ``training_step`` at instance
  level so the pruning penalty is added to the returned loss, and its ``on_load_checkpoint`` so a
  checkpoint from another pruning config is refused before its weights are loaded.
- ``on_fit_start``: moves the gates and multipliers into their own optimizer groups
  (:func:`~lightning_prune.integrations.optim.regroup_optimizer_`), pins their learning rate before and clamps the
  gates after each optimizer step. Lightning restores optimizer state after this hook, so a resumed run regroups
  the same way before the saved state is loaded.
- ``on_train_batch_start``: sets the phase from ``trainer.global_step`` (dense warm-up, pruning, frozen
  masks), ``pruner.pruning_step = global_step - dense_steps`` and a per-step sampling seed, so a resumed
  run continues exactly as an uninterrupted one.
- ``on_train_batch_end``: logs sparsity, expected size, λ and kept units through ``pl_module.log_dict``.
- ``on_train_end``: rank 0 exports the compact model, its report and a kept-units heatmap, and sends the
  heatmap to TensorBoard / wandb loggers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import Unpack, override

from lightning_prune.errors import ExportDirectoryError, PruningConfigError
from lightning_prune.integrations.facade import DriverFacade, RunOptions, documents_run_options
from lightning_prune.integrations.lightning_support import (
    InstancePatches,
    add_penalty,
    check_automatic_optimization,
    check_gate_state,
    check_sharded,
    check_strategy,
    eval_mode_warning,
    export_after_fit,
    find_model,
    known_total_steps,
    log_statistics,
    the_optimizer,
)
from lightning_prune.integrations.resume import config_fingerprint  # noqa: F401  (imported from here before)
from lightning_prune.integrations.schedule import check_flag
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner import Pruner

# the names these checks had in this module before they moved to lightning_support
_check_strategy, _check_sharded = check_strategy, check_sharded

#: How a user of the callback (or of ``lightning-prune export``) replaces a non-empty export directory.
OVERWRITE_HINT = "`overwrite_export=True` (`--overwrite true` for `lightning-prune export`)"


@documents_run_options
class PruningCallback(Callback, DriverFacade):
    """Learn a structured pruning mask while a Lightning ``Trainer`` fits, then export the compact model.

    Add it to the trainer; nothing in the ``LightningModule`` changes (its ``training_step`` may return a
    loss tensor or a dict with ``"loss"``; ``configure_optimizers`` may pass ``self.parameters()``).
    Training goes through up to three phases, counted in optimizer steps (``trainer.global_step``):

    1. ``dense``: the first ``dense_steps`` steps run without masks (a warm-up fine-tune);
    2. ``prune``: masks are sampled and the penalty drives the expected sparsity to the target
       (``config.warmup_steps`` ramps the target from 0, counted from the end of the dense phase);
    3. ``frozen`` (from step ``freeze_after_steps`` on, if given): deterministic masks, gates and multipliers no
       longer move, so the model fine-tunes with its final architecture.

    The gates stay attached after ``fit`` (``callback.pruner`` gives access to them). ``callback.driver`` is the
    :class:`~lightning_prune.integrations.driver.TrainingDriver` that runs the schedule, the optimizer groups and the
    export; the options below read and write its values.

    The arguments after ``model_attribute`` are keyword-only.

    Args:
        config: the method config, e.g. ``lightning_prune.L0Config(target_sparsity=0.5)``.
        export_dir: where rank 0 writes the compact model, ``lightning_prune_report.json`` and
            ``kept_units.png`` when training ends; ``None`` exports nothing. Checked at setup: it must be
            writable and empty (or absent) unless ``overwrite_export=True``.
        model_attribute: attribute path of the model to prune inside the ``LightningModule``. By default the
            attribute ``model``, else the single child module that a registered adapter handles.
        prog_bar: show the exact sparsity (``sparsity``), the schedule's current target (``target``) and the first
            Lagrange multiplier (``λ1``, where the method has one) in the progress bar.
        example_inputs: inputs of one forward pass for models that are traced (plain CNNs/MLPs such as a torchvision
            ResNet, through the ``dependency_graph`` adapter), e.g. ``torch.randn(1, 3, 224, 224)``; ``None`` for the
            model families with their own adapter (Llama, BERT, GPT-2, ...). As in :func:`lightning_prune.attach`.
        {run_options}

    Raises:
        PruningConfigError: an argument is invalid (the message lists the allowed values).

    Example::

        import lightning as L
        import lightning_prune as lp

        callback = lp.PruningCallback(
            lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn"), warmup_steps=200),
            export_dir="compact/",
            dense_steps=50,
            freeze_after_steps=800,
        )
        trainer = L.Trainer(max_steps=1000, callbacks=[callback])
        trainer.fit(lit_module, datamodule)  # lit_module.model is e.g. a LlamaForCausalLM, optionally with LoRA
        compact = lp.load_compact("compact/")
    """

    def __init__(
        self,
        config: PruningConfig,
        export_dir: str | Path | None = None,
        model_attribute: str | None = None,
        *,
        prog_bar: bool = True,
        example_inputs: Any = None,
        **options: Unpack[RunOptions],
    ) -> None:
        if model_attribute is not None and (not isinstance(model_attribute, str) or not model_attribute):
            raise PruningConfigError(
                f"`model_attribute` must be a non-empty attribute name or None, got {model_attribute!r}."
            )
        DriverFacade.__init__(
            self,
            config,
            export_dir,
            options,
            overwrite_hint=OVERWRITE_HINT,
            info=rank_zero_info,
            warn=rank_zero_warn,
            config_hint=" HINT: in YAML give `class_path: lightning_prune.L0Config` and `init_args`.",
        )
        check_flag("prog_bar", prog_bar)
        self.prog_bar = prog_bar
        self.model_attribute = model_attribute
        self.example_inputs = example_inputs
        self._model_path: str | None = None
        self._patches = InstancePatches()

    # -- setup / teardown ------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [c for c in trainer.callbacks if isinstance(c, PruningCallback) and c is not self]
        if others:
            raise PruningConfigError("The trainer has more than one PruningCallback; use a single one.")
        if stage == "fit":
            check_automatic_optimization(pl_module)
            self._check_export_dir(trainer)
        check_strategy(trainer)
        sized = stage == "fit" or (trainer.max_steps is not None and trainer.max_steps > 0)
        if self.driver.awaits_run_length and sized:
            self.driver.resolve_schedule(known_total_steps(trainer), model=pl_module)
        self.attach(pl_module)
        self.driver.use_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        self._patches.patch(pl_module, "on_load_checkpoint", self._wrap_on_load_checkpoint)
        if stage == "fit":
            self._patches.patch(pl_module, "training_step", self._wrap_training_step)
            self.driver.set_step(trainer.global_step)

    def attach(self, pl_module: nn.Module) -> Pruner:
        """Attach the gates to the model inside ``pl_module`` (once; later calls return the same pruner).

        ``setup`` calls it; call it yourself to load a checkpoint of a pruned run into a fresh module outside
        ``Trainer.fit`` (as :meth:`export_checkpoint` does).
        """
        path, model = find_model(pl_module, self.model_attribute)
        if self.driver.attached_to(model):
            return self.pruner
        pruner = self.driver.attach(model, self.example_inputs)
        self._model_path = path
        rank_zero_info(
            f"lightning-prune: gates on {list(pruner.specs)} of `{type(pl_module).__name__}.{path}` "
            f"({type(pruner.hf_model).__name__}), target sparsity {self.config.target_sparsity} of "
            f"{self.config.target}"
        )
        return pruner

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._patches.undo()
        self.driver.release()

    def _check_export_dir(self, trainer: pl.Trainer) -> None:
        message = self.driver.export_dir_problem() if trainer.is_global_zero else None
        message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            raise ExportDirectoryError(message)

    def _wrap_training_step(self, training_step, pl_module: nn.Module):
        @functools.wraps(training_step)
        def step_with_penalty(*args: Any, **kwargs: Any) -> Any:
            return add_penalty(self.pruner, training_step(*args, **kwargs), self.driver.global_step)

        return step_with_penalty

    # -- optimizer, phases, logging --------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer, schedulers = the_optimizer(trainer, pl_module)
        check_sharded(trainer, self.pruner)
        self.driver.hook_optimizer(optimizer, schedulers)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warning = None if trainer.fast_dev_run else self.schedule_warning(known_total_steps(trainer), "max_steps")
        if warning is not None:  # a smoke test (fast_dev_run) may stop anywhere
            rank_zero_warn(warning)
        self.driver.set_step(trainer.global_step)  # after a resume the global step is known only now
        warning = eval_mode_warning(pl_module, self._model_path, self.pruner.hf_model)
        if warning is not None:
            rank_zero_warn(warning)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.driver.start_batch(trainer.global_step, batch_idx % max(1, trainer.accumulate_grad_batches))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.driver.global_step = trainer.global_step
        log_statistics(trainer, pl_module, self.driver, self.log_stats, self.prog_bar)

    # -- export ----------------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        export_after_fit(trainer, pl_module, self.driver, lambda: (self.state_key, self.state_dict()))

    def export_checkpoint(
        self,
        pl_module: nn.Module,
        ckpt_path: str | Path,
        export_dir: str | Path | None = None,
        overwrite: bool | None = None,
    ) -> Path:
        """Load a checkpoint of a run that used this callback into a fresh ``pl_module`` and export it.

        The module must be built as for training (same model, same LoRA); the gates are attached here, the
        checkpoint is checked against this config, and the compact model, report and plot are written.
        The checkpoint is unpickled (``torch.load(weights_only=False)``): load only checkpoints you trust.

        Returns:
            The export directory.
        """
        target = Path(export_dir) if export_dir is not None else self.export_dir
        if target is None:
            raise PruningConfigError("No export directory: pass `export_dir=` or set the callback's `export_dir`.")
        overwrite = self.overwrite_export if overwrite is None else overwrite
        self.driver.check_export_dir(target, overwrite)
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        pruner = self.attach(pl_module)
        self.check_checkpoint(pl_module, checkpoint)
        pl_module.load_state_dict(checkpoint["state_dict"])
        self.load_state_dict(checkpoint.get("callbacks", {}).get(self.state_key, {}))
        self.driver.export_to(target, overwrite, int(checkpoint.get("global_step", self.driver.global_step)))
        rank_zero_info(f"lightning-prune: exported {ckpt_path} to {target}: {pruner.last_report.summary()}")
        return target

    # -- checkpoints -----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return self.driver.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.driver.load_state_dict(state_dict)

    def _wrap_on_load_checkpoint(self, on_load_checkpoint, pl_module: nn.Module):
        # Lightning calls the module's on_load_checkpoint right before it loads the state dict (and before the
        # callbacks' own checkpoint hooks): the one place to refuse a mismatching checkpoint with a clear message.
        @functools.wraps(on_load_checkpoint)
        def checked(checkpoint: dict[str, Any]) -> Any:
            self.check_checkpoint(pl_module, checkpoint)
            return on_load_checkpoint(checkpoint)

        return checked

    def check_checkpoint(self, pl_module: nn.Module | None, checkpoint: Mapping[str, Any]) -> None:
        """Refuse a checkpoint whose gates or pruning config differ from this callback's.

        Raises:
            PruningConfigError: the message lists the differing gate shapes or config fields.
        """
        saved = checkpoint.get("callbacks", {}).get(self.state_key, {})
        self.driver.check_record(saved, "without `ckpt_path`")
        if pl_module is None or ("state_dict" not in checkpoint and saved):
            # a distributed checkpoint (ModelParallelStrategy's directory) loads the weights into the module itself:
            # no state_dict to compare here, and the callback state above says it comes from a pruning run
            return
        check_gate_state(pl_module, checkpoint, saved)
