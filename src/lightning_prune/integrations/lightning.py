"""Lightning integration: :class:`PruningCallback` prunes while a ``Trainer`` fits, with no change to the module.

What the callback does, hook by hook:

- ``setup``: finds the model inside the ``LightningModule`` (see :func:`find_model`), attaches the gates
  (before ``configure_optimizers`` and before DDP wraps the module, so DDP all-reduces the gate gradients
  and checkpoints carry them), checks ``export_dir``, and wraps the module's ``training_step`` at instance
  level so the pruning penalty is added to the returned loss, and its ``on_load_checkpoint`` so a
  checkpoint from another pruning config is refused before its weights are loaded.
- ``on_fit_start``: moves the gates and multipliers into their own optimizer groups
  (:func:`~lightning_prune.integrations.optim.regroup_optimizer_`) and clamps the gates after each
  optimizer step. Lightning restores optimizer state after this hook, so a resumed run regroups the same way
  before the saved state is loaded.
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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_prune.adapters import resolve_adapter
from lightning_prune.errors import ExportDirectoryError, PruningConfigError, UnsupportedModelError
from lightning_prune.export.io import check_export_dir, export_dir_problem
from lightning_prune.export.merge import unwrap_model
from lightning_prune.integrations.fsdp import sharding_of
from lightning_prune.integrations.optim import (
    extend_schedulers_,
    regroup_optimizer_,
    set_group_learning_rates_,
)
from lightning_prune.integrations.resume import (  # noqa: F401  (config_fingerprint: imported from here before)
    config_fingerprint,
    config_mismatch,
    gate_shapes,
    run_record,
)
from lightning_prune.integrations.schedule import PHASE_INDEX, PhaseSchedule, sampling_seed
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner import STATE_ATTRIBUTE, Pruner

_CALLBACK_NAME = "PruningCallback"
#: How a user of the callback (or of ``lightning-prune export``) replaces a non-empty export directory.
OVERWRITE_HINT = "`overwrite_export=True` (`--overwrite true` for `lightning-prune export`)"


def find_model(pl_module: nn.Module, model_attribute: str | None = None) -> tuple[str, nn.Module]:
    """The model to prune inside ``pl_module`` and its attribute path.

    The rule, in order: ``model_attribute`` if given (a dotted path such as ``"backbone.lm"``); else the
    attribute ``model`` if it is a module; else the one direct child module that a registered adapter handles
    (peft wrappers are looked through).

    Raises:
        UnsupportedModelError: nothing matched, or several children matched; the message names the attributes
            that were looked at and how to pass ``model_attribute=``.
    """
    if model_attribute is not None:
        try:
            module = pl_module.get_submodule(model_attribute)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Module) or module is pl_module:
            children = [name for name, _ in pl_module.named_children()]
            raise UnsupportedModelError(
                f"`model_attribute={model_attribute!r}` does not name a submodule of {type(pl_module).__name__}. "
                f"Its child modules are {children}."
            )
        return model_attribute, module
    model = getattr(pl_module, "model", None)
    if isinstance(model, nn.Module):
        return "model", model
    looked: list[str] = []
    matches: list[tuple[str, nn.Module]] = []
    for name, child in pl_module.named_children():
        looked.append(f"{name} ({type(child).__name__})")
        try:
            resolve_adapter(unwrap_model(child))
        except UnsupportedModelError:
            continue
        matches.append((name, child))
    if len(matches) == 1:
        return matches[0]
    what = "several child modules that registered adapters handle" if matches else "no model to prune"
    raise UnsupportedModelError(
        f"PruningCallback found {what} in {type(pl_module).__name__}: it looked for an attribute `model`, then "
        f"for a single child module that a registered adapter handles, among {looked or 'no child modules'}. "
        "Pass PruningCallback(config, model_attribute='<attribute name>') to say which module to prune."
    )


class PruningCallback(Callback, PhaseSchedule):
    """Learn a structured pruning mask while a Lightning ``Trainer`` fits, then export the compact model.

    Add it to the trainer; nothing in the ``LightningModule`` changes (its ``training_step`` may return a
    loss tensor or a dict with ``"loss"``; ``configure_optimizers`` may pass ``self.parameters()``).
    Training goes through up to three phases, counted in optimizer steps (``trainer.global_step``):

    1. ``dense``: the first ``dense_steps`` steps run without masks (a warm-up fine-tune);
    2. ``prune``: masks are sampled and the penalty drives the expected sparsity to the target
       (``config.warmup_steps`` ramps the target from 0, counted from the end of the dense phase);
    3. ``frozen`` (from step ``freeze_after_steps`` on, if given): deterministic masks, gates and multipliers no
       longer move, so the model fine-tunes with its final architecture.

    The gates stay attached after ``fit`` (``callback.pruner`` gives access to them).

    Args:
        config: the method config, e.g. ``lightning_prune.L0Config(target_sparsity=0.5)``.
        export_dir: where rank 0 writes the compact model, ``lightning_prune_report.json`` and
            ``kept_units.png`` when training ends; ``None`` exports nothing. Checked at setup: it must be
            writable and empty (or absent) unless ``overwrite_export=True``.
        model_attribute: attribute path of the model to prune inside the ``LightningModule``. By default the
            attribute ``model``, else the single child module that a registered adapter handles.
        dense_steps: optimizer steps trained without masks before pruning starts (``None``: 0, or the ``"auto"``
            schedule's).
        freeze_after_steps: global step from which the masks are frozen (must be > ``dense_steps``); ``None``
            prunes until the end (or the ``"auto"`` schedule's freeze).
        overwrite_export: replace a non-empty ``export_dir``.
        plot: write the kept-units heatmap and log it as an image to TensorBoard / wandb loggers.
        adapter: force a registered model adapter by name (see ``lightning_prune.available_adapters()``).
        seed: base seed of the gate samples (each step draws from a seed derived from this and
            ``global_step``). ``None`` uses ``PL_GLOBAL_SEED`` (set by ``seed_everything``) or 0.
        log_stats: log the pruning statistics every ``log_every_n_steps`` under ``pruning/``.
        prog_bar: show the exact sparsity (``sparsity``), the schedule's current target (``target``) and the first
            Lagrange multiplier (``λ1``, where the method has one) in the progress bar.
        reset_optimizer_at_freeze: when the masks freeze (at ``freeze_after_steps``), forget the optimizer state of
            the model's weights so that the final architecture fine-tunes with fresh moments, as after the cut of a
            prune-then-fine-tune pipeline (``None``: off, or on under the ``"auto"`` schedule).
        example_inputs: inputs of one forward pass for models that are traced (plain CNNs/MLPs such as a torchvision
            ResNet, through the ``dependency_graph`` adapter), e.g. ``torch.randn(1, 3, 224, 224)``; ``None`` for the
            model families with their own adapter (Llama, BERT, GPT-2, ...). As in :func:`lightning_prune.attach`.
        schedule: ``"auto"`` (default): for an :class:`~lightning_prune.L0Config`, when none of ``dense_steps``,
            ``freeze_after_steps``, ``reset_optimizer_at_freeze`` is given, the phases of
            :func:`lightning_prune.recipes.l0` for the run's length (``max_steps``, or epochs × batches), measured
            best on ``benchmarks/quality.py`` (issue #18): runs of 200+ steps train dense 30%, reach the target over
            5% and freeze at 40% with a fresh optimizer state; shorter runs 10% / 30% / 50%. A config with
            ``warmup_steps=0`` gets the recipe's warm-up. Other methods, or any phase argument given: ``"manual"``.
            ``"manual"``: the values given (unset: no dense phase, no freeze, no reset).

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
        dense_steps: int | None = None,
        freeze_after_steps: int | None = None,
        overwrite_export: bool = False,
        plot: bool = True,
        adapter: str | None = None,
        seed: int | None = None,
        log_stats: bool = True,
        prog_bar: bool = True,
        example_inputs: Any = None,
        reset_optimizer_at_freeze: bool | None = None,
        schedule: str = "auto",
    ) -> None:
        super().__init__()
        if model_attribute is not None and (not isinstance(model_attribute, str) or not model_attribute):
            raise PruningConfigError(
                f"`model_attribute` must be a non-empty attribute name or None, got {model_attribute!r}."
            )
        self._init_options(
            config,
            export_dir,
            dense_steps,
            freeze_after_steps,
            seed,
            adapter,
            config_hint=" HINT: in YAML give `class_path: lightning_prune.L0Config` and `init_args`.",
            overwrite_export=overwrite_export,
            plot=plot,
            log_stats=log_stats,
            prog_bar=prog_bar,
            reset_optimizer_at_freeze=reset_optimizer_at_freeze,
            schedule=schedule,
        )
        self.model_attribute = model_attribute
        self.example_inputs = example_inputs
        self._pruner: Pruner | None = None
        self._model_path: str | None = None
        self._phase = "dense" if self.dense_steps > 0 else "prune"
        self._global_step = 0
        self._base_seed = 0
        self._patched: list[tuple[nn.Module, str, bool, Any]] = []
        self._hooks: list[Any] = []
        self._optimizer: torch.optim.Optimizer | None = None

    # -- setup / teardown ------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [c for c in trainer.callbacks if isinstance(c, PruningCallback) and c is not self]
        if others:
            raise PruningConfigError("The trainer has more than one PruningCallback; use a single one.")
        if stage == "fit":
            if not pl_module.automatic_optimization:
                raise PruningConfigError(
                    f"PruningCallback needs automatic optimization, but {type(pl_module).__name__} sets "
                    "`automatic_optimization = False`. With manual optimization, attach the gates yourself: "
                    "`pruner = lightning_prune.attach(self.model, config)` in `__init__`, add `pruner.penalty()` "
                    "to the loss, optimize `pruner.param_groups(...)` and call `pruner.step()` after `opt.step()`."
                )
            self._check_export_dir(trainer)
        _check_strategy(trainer)
        if stage == "fit" or (trainer.max_steps is not None and trainer.max_steps > 0):
            self._resolve_schedule(_known_total_steps(trainer), rank_zero_info)
        self.attach(pl_module)
        self._base_seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._patch(pl_module, "on_load_checkpoint", self._wrap_on_load_checkpoint)
        if stage == "fit":
            self._patch(pl_module, "training_step", self._wrap_training_step)
            self._set_phase(self.phase_at(trainer.global_step), trainer.global_step)

    def attach(self, pl_module: nn.Module) -> Pruner:
        """Attach the gates to the model inside ``pl_module`` (once; later calls return the same pruner).

        ``setup`` calls it; call it yourself to load a checkpoint of a pruned run into a fresh module outside
        ``Trainer.fit`` (as :meth:`export_checkpoint` does).
        """
        path, model = find_model(pl_module, self.model_attribute)
        if self._pruner is not None and getattr(model, STATE_ATTRIBUTE, None) is self._pruner.state:
            return self._pruner
        self._pruner = Pruner(model, self.config, adapter=self.adapter, example_inputs=self.example_inputs)
        self._model_path = path
        rank_zero_info(
            f"lightning-prune: gates on {list(self._pruner.specs)} of `{type(pl_module).__name__}.{path}` "
            f"({type(self._pruner.hf_model).__name__}), target sparsity {self.config.target_sparsity} of "
            f"{self.config.target}"
        )
        return self._pruner

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for module, name, had_own, previous in reversed(self._patched):
            if had_own:
                setattr(module, name, previous)
            else:
                module.__dict__.pop(name, None)
        self._patched = []
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._optimizer = None
        if self._pruner is not None:
            self._pruner.sample_seed = None

    def _patch(self, module: nn.Module, name: str, wrap) -> None:
        # an instance attribute shadows the class's method; teardown puts back what was there before
        had_own = name in module.__dict__
        previous = module.__dict__.get(name)
        setattr(module, name, wrap(getattr(module, name), module))
        self._patched.append((module, name, had_own, previous))

    def _check_export_dir(self, trainer: pl.Trainer) -> None:
        message = None
        if self.export_dir is not None and trainer.is_global_zero:
            message = export_dir_problem(self.export_dir, self.overwrite_export, OVERWRITE_HINT)
        message = trainer.strategy.broadcast(message, src=0)
        if message is not None:
            raise ExportDirectoryError(message)

    # -- the loss --------------------------------------------------------------------------------------
    def _wrap_training_step(self, training_step, pl_module: nn.Module):
        @functools.wraps(training_step)
        def step_with_penalty(*args: Any, **kwargs: Any) -> Any:
            return self._add_penalty(training_step(*args, **kwargs))

        return step_with_penalty

    def _add_penalty(self, output: Any) -> Any:
        if output is None:  # the user skips this batch
            return None
        loss = output.get("loss") if isinstance(output, Mapping) else output
        self._pruner.check_loss(loss, "loss returned by `training_step`", self._global_step)
        penalty = self._pruner.penalty()
        if isinstance(output, torch.Tensor):
            return output + penalty.to(output.dtype)
        if isinstance(output, Mapping) and isinstance(output.get("loss"), torch.Tensor):
            out = dict(output)
            out["loss"] = out["loss"] + penalty.to(out["loss"].dtype)
            return out
        raise PruningConfigError(
            "PruningCallback adds the pruning penalty to the loss that `training_step` returns, which must be a "
            f"Tensor or a dict with a Tensor under 'loss'; got {type(output).__name__}."
        )

    # -- optimizer and phases --------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise PruningConfigError(
                f"{type(pl_module).__name__}.configure_optimizers returned {len(trainer.optimizers)} optimizers; "
                "PruningCallback needs exactly one (automatic optimization) to add the gate groups to. "
                "Return one optimizer over `self.parameters()`."
            )
        _check_sharded(trainer, self._pruner)
        optimizer = trainer.optimizers[0]
        groups_before, source = regroup_optimizer_(optimizer, self._pruner)
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        extend_schedulers_(schedulers, groups_before, source, len(optimizer.param_groups) - groups_before)
        self._optimizer = optimizer
        self._hooks.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        set_group_learning_rates_(optimizer, self._pruner, self._phase == "prune")

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # a user's LR scheduler may have written our groups' lr after the last step: set it again
        set_group_learning_rates_(optimizer, self._pruner, self._phase == "prune")

    def _after_optimizer_step(self, *_: Any) -> None:
        with torch.no_grad():
            for gate in self._pruner.gates.values():
                gate.post_step_()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        warning = None if trainer.fast_dev_run else self.schedule_warning(_known_total_steps(trainer), "max_steps")
        if warning is not None:  # a smoke test (fast_dev_run) may stop anywhere
            rank_zero_warn(warning)
        # after a resume the global step is known only now
        self._set_phase(self.phase_at(trainer.global_step), trainer.global_step)
        if not self._pruner.hf_model.training:
            rank_zero_warn(
                f"lightning-prune: `{type(pl_module).__name__}.{self._model_path}` is in eval mode at the start of "
                "training (Hugging Face `from_pretrained` returns models in eval mode, and Lightning keeps submodule "
                "modes), so the masks are deterministic and the gates learn from the penalty only. Call "
                "`model.train()` in your LightningModule's `__init__` or `on_train_start`."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self._global_step = step
        self._set_phase(self.phase_at(step), step)
        micro = batch_idx % max(1, trainer.accumulate_grad_batches)
        self._pruner.sample_seed = sampling_seed(self._base_seed, step, micro)

    def _set_phase(self, phase: str, global_step: int) -> None:
        if phase != self._phase:
            rank_zero_info(f"lightning-prune: phase '{self._phase}' -> '{phase}' at global step {global_step}")
            if self._phase == "dense":  # the dense warm-up's importance scores set the gates (init_from_importance)
                self._pruner.maybe_init_gates_from_importance_()
            self._at_freeze(phase, global_step, rank_zero_warn, rank_zero_info)
        self._phase = phase
        self._global_step = global_step
        # `requires_grad` stays on (unlike `Pruner.set_phase`): a zero lr stops the gates, and DDP keeps
        # seeing them used (the penalty is 0·Σ gates outside the prune phase).
        self._pruner.phase = phase
        self._pruner.pruning_step = self.pruning_step_at(global_step)
        if self._optimizer is not None:
            set_group_learning_rates_(self._optimizer, self._pruner, phase == "prune")

    # -- logging ---------------------------------------------------------------------------------------
    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._global_step = trainer.global_step
        if not (self.log_stats or self.prog_bar):
            return
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and not (connector.should_update_logs or trainer.fast_dev_run):
            return
        stats = self._pruner.stats()
        stats["phase"] = PHASE_INDEX[self._phase]
        if self.log_stats:
            metrics = {f"pruning/{k}": float(v) for k, v in stats.items()}
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=True, batch_size=1)
        if self.prog_bar:  # what a user watches: where the masks are, where the schedule wants them, the pull of λ
            bar = {"sparsity": stats["exact_sparsity"], "target": stats["target_sparsity"]}
            if "lambda_1" in stats:
                bar["λ1"] = stats["lambda_1"]
            pl_module.log_dict(bar, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)

    # -- export ----------------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._global_step = trainer.global_step
        self._pruner.pruning_step = self.pruning_step_at(trainer.global_step)
        if self._phase == "dense":
            rank_zero_warn(
                f"lightning-prune: training ended in the dense phase (global step {trainer.global_step} <= "
                f"dense_steps={self.dense_steps}); the gates never trained, so the export is the dense model."
            )
        failure: Exception | None = None
        sharded = sharding_of(self._pruner)
        if sharded is not None and self.export_dir is not None:  # FSDP2: every rank gathers, rank 0 writes
            sharded.save_compact(self.export_dir, overwrite=self.overwrite_export)  # a failure raises on every rank
        if trainer.is_global_zero:
            kept = self._kept_units()
            plot_path = None
            if self.export_dir is not None:
                try:
                    if sharded is None:
                        self._pruner.save_compact(self.export_dir, overwrite=self.overwrite_export)
                except Exception as error:  # the run is not lost: keep what was trained, say how to export it
                    failure = self._rescue(trainer, pl_module, error)
                else:
                    summary = self._pruner.last_report.summary()
                    rank_zero_info(f"lightning-prune: exported to {self.export_dir}: {summary}")
                    if self.plot:
                        plot_path = self._write_plot(kept, self.export_dir)
            if self.plot and failure is None:
                self._log_figure(trainer, kept, plot_path)
        trainer.strategy.barrier("lightning_prune.export")  # no rank leaves fit() before the export exists
        if trainer.strategy.broadcast(failure is not None, src=0):  # every rank stops, none hangs at a barrier
            if failure is not None:
                raise failure
            raise RuntimeError("lightning-prune: the export failed on rank 0 (see its error); nothing was exported.")

    def _rescue(self, trainer: pl.Trainer, pl_module: pl.LightningModule, error: Exception) -> Exception:
        """Save the trained module beside ``export_dir`` when the export fails, and return the error to raise
        (the original error, with the rescue path and the command that exports it later in its message)."""
        rescue = self.export_dir.with_name(f"{self.export_dir.name}.rescue.ckpt")
        try:
            torch.save(
                {
                    "state_dict": pl_module.state_dict(),
                    "callbacks": {self.state_key: self.state_dict()},
                    "global_step": trainer.global_step,
                },
                rescue,
            )
        except Exception as save_error:  # nothing more to do: report both
            note = f" Saving the trained module to {str(rescue)!r} failed too ({save_error})."
        else:
            note = (
                f" The trained module (gates included) was saved to {str(rescue)!r}: export it later with "
                f"`PruningCallback(<same config>).export_checkpoint(<module built as for training>, {str(rescue)!r}, "
                "export_dir=...)`."
            )
        try:
            return type(error)(f"{error}{note}")
        except Exception:  # an error class with another signature
            return RuntimeError(f"lightning-prune: the export failed: {error!r}.{note}")

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
        check_export_dir(target, overwrite, OVERWRITE_HINT)
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        pruner = self.attach(pl_module)
        self.check_checkpoint(pl_module, checkpoint)
        pl_module.load_state_dict(checkpoint["state_dict"])
        self.load_state_dict(checkpoint.get("callbacks", {}).get(self.state_key, {}))
        step = int(checkpoint.get("global_step", self._global_step))
        pruner.phase = self.phase_at(max(step - 1, 0))  # the phase of the last step taken
        pruner.pruning_step = self.pruning_step_at(step)
        pruner.save_compact(target, overwrite=overwrite)
        if self.plot:
            self._write_plot(self._kept_units(), target)
        rank_zero_info(f"lightning-prune: exported {ckpt_path} to {target}: {pruner.last_report.summary()}")
        return target

    def _kept_units(self) -> dict[str, list[int]]:
        return {name: m.sum(-1).long().tolist() for name, m in self._pruner.deterministic_masks().items()}

    def _write_plot(self, kept: dict[str, list[int]], directory: Path) -> Path:
        from lightning_prune.integrations.plots import PLOT_FILENAME, save_kept_units_plot

        units = {name: spec.units for name, spec in self._pruner.specs.items()}
        return save_kept_units_plot(kept, units, Path(directory) / PLOT_FILENAME, title=self._plot_title())

    def _plot_title(self) -> str:
        return f"Kept units per layer\n(target sparsity {self.config.target_sparsity} of {self.config.target})"

    def _log_figure(self, trainer: pl.Trainer, kept: dict[str, list[int]], plot_path: Path | None) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
        if not loggers:
            return
        import matplotlib.pyplot as plt

        from lightning_prune.integrations.plots import kept_units_figure, save_kept_units_plot

        units = {name: spec.units for name, spec in self._pruner.specs.items()}
        if plot_path is None:
            plot_path = Path(tempfile.mkdtemp(prefix="lightning_prune_plot_")) / "kept_units.png"
            save_kept_units_plot(kept, units, plot_path, title=self._plot_title())
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                fig = kept_units_figure(kept, units, title=self._plot_title())
                lg.experiment.add_figure("pruning/kept_units", fig, global_step=trainer.global_step, close=True)
                plt.close(fig)
            else:
                lg.log_image(key="pruning/kept_units", images=[str(plot_path)], step=trainer.global_step)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _gate_shapes(self) -> dict[str, list[int]]:
        return gate_shapes(self._pruner)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "version": 1,
            "phase": self._phase,
            "global_step": self._global_step,
            "dense_steps": self.dense_steps,
            "freeze_after_steps": self.freeze_after_steps,
            "seed": self._base_seed,
            "config": self.config.to_dict(),
        }
        if self._pruner is not None:
            state["pruning_step"] = self.pruning_step_at(self._global_step)
            state.update(run_record(self.config, self._gate_shapes()))
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._phase = state_dict.get("phase", self._phase)
        self._global_step = int(state_dict.get("global_step", self._global_step))
        if self.seed is None:  # keep the seed of the interrupted run so its samples continue exactly
            self._base_seed = int(state_dict.get("seed", self._base_seed))
        if state_dict.get("dense_steps", self.dense_steps) != self.dense_steps:
            rank_zero_warn(
                f"lightning-prune: the checkpoint was trained with dense_steps={state_dict['dense_steps']}, this "
                f"run uses {self.dense_steps}; phases follow the new value."
            )

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
        problem = config_mismatch(saved, self.config, self._gate_shapes(), "without `ckpt_path`")
        if problem is not None:
            raise PruningConfigError(problem)
        if pl_module is None or ("state_dict" not in checkpoint and saved):
            # a distributed checkpoint (ModelParallelStrategy's directory) loads the weights into the module itself:
            # no state_dict to compare here, and the callback state above says it comes from a pruning run
            return
        state = checkpoint.get("state_dict", {})
        current = {k: tuple(v.shape) for k, v in pl_module.state_dict().items() if STATE_ATTRIBUTE in k.split(".")}
        stored = {k: tuple(v.shape) for k, v in state.items() if STATE_ATTRIBUTE in k.split(".")}
        if not stored:
            raise PruningConfigError(
                "The checkpoint has no pruning gates (no `pruning_gates` entries in its state_dict): it was not "
                "written by a run with PruningCallback. To prune from a dense checkpoint, load its weights into the "
                "module before `trainer.fit` (e.g. `Module.load_from_checkpoint`) instead of passing `ckpt_path`."
            )
        bad = {
            k: (stored.get(k), current.get(k))
            for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)
        }
        if bad:
            raise PruningConfigError(
                f"The checkpoint's gates do not match this config's (checkpoint shape, current shape): {bad}. "
                f"Use the pruning config (structures {saved.get('config', {}).get('structures', '?')}) it was "
                "trained with, or start a new run without `ckpt_path`."
            )


def _check_strategy(trainer: pl.Trainer) -> None:
    """Refuse Lightning's ``FSDPStrategy`` (FSDP1): it flattens the gates into the root's sharded ``FlatParameter``
    (the penalty, the samples and the export read them outside any forward); it also needs CUDA."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        raise PruningConfigError(
            "PruningCallback does not support `FSDPStrategy` (FSDP1): it would shard the gates and multipliers into "
            "the root module's flat parameter. Use FSDP2 through `ModelParallelStrategy` and call "
            "`lightning_prune.integrations.fsdp.shard_(self.model, mesh=self.device_mesh['data_parallel'])` in your "
            "LightningModule's `configure_model` (it keeps the gates replicated and averages their gradients)."
        )


def _check_sharded(trainer: pl.Trainer, pruner: Pruner) -> None:
    """Under FSDP2 the model must have been sharded by ``shard_``: a bare ``fully_shard`` shards the gates, and no
    sharding at all under ``ModelParallelStrategy`` leaves their gradients different on every rank."""
    from torch.distributed.tensor import DTensor

    sharded_gates = [n for n, p in pruner.state.named_parameters() if isinstance(p, DTensor)]
    model_parallel = type(trainer.strategy).__name__ == "ModelParallelStrategy"
    if sharded_gates or (model_parallel and trainer.world_size > 1 and sharding_of(pruner) is None):
        found = f"the gates are sharded DTensors ({sharded_gates[:2]})" if sharded_gates else "`shard_` was not called"
        raise PruningConfigError(
            f"PruningCallback under FSDP2: {found}. In `configure_model`, shard the model with "
            "`lightning_prune.integrations.fsdp.shard_(self.model, mesh=self.device_mesh['data_parallel'])` instead "
            "of calling `fully_shard` on it yourself: it keeps the gates and multipliers out of the shards, averages "
            "their gradients across ranks and exports from a full state dict."
        )


def _known_total_steps(trainer: pl.Trainer) -> int | None:
    """The run's optimizer steps when the trainer knows them before training (``max_steps``, or epochs × batches)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # an iterable without a length, or a loop Lightning cannot size: unknown
        return None
    return int(total) if total != float("inf") else None
