"""What :class:`~lightning_prune.PruningCallback` needs from Lightning besides its hooks.

Finding the model inside a ``LightningModule`` (:func:`find_model`), the instance-level patches of its methods
(:class:`InstancePatches`), the penalty added to what its ``training_step`` returns (:func:`add_penalty`), checks of
the module and its optimizer (:func:`check_automatic_optimization`, :func:`the_optimizer`,
:func:`eval_mode_warning`), refusing strategies that would shard the gates (:func:`check_strategy`,
:func:`check_sharded`), the run's length (:func:`known_total_steps`), the statistics for the loggers and the
progress bar (:func:`log_statistics`), the gate entries of a checkpoint's ``state_dict`` (:func:`check_gate_state`),
the export at the end of ``fit`` on every rank (:func:`export_after_fit`), the rescue checkpoint of a failed export
(:func:`rescue_checkpoint`) and the kept-units heatmap for TensorBoard / wandb (:func:`log_kept_units_figure`).
The framework-neutral part of the run is the
:class:`~lightning_prune.integrations.driver.TrainingDriver`'s.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_prune.adapters import resolve_adapter
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.export.merge import unwrap_model
from lightning_prune.integrations.driver import TrainingDriver
from lightning_prune.integrations.fsdp import sharding_of
from lightning_prune.pruner import STATE_ATTRIBUTE, Pruner


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


class InstancePatches:
    """Methods of a module replaced at instance level (an instance attribute shadows the class's method);
    :meth:`undo` puts back what was there before."""

    def __init__(self) -> None:
        self._patched: list[tuple[nn.Module, str, bool, Any]] = []

    def patch(self, module: nn.Module, name: str, wrap: Callable[[Any, nn.Module], Any]) -> None:
        """``module.<name> = wrap(module.<name>, module)``."""
        had_own = name in module.__dict__
        previous = module.__dict__.get(name)
        setattr(module, name, wrap(getattr(module, name), module))
        self._patched.append((module, name, had_own, previous))

    def undo(self) -> None:
        for module, name, had_own, previous in reversed(self._patched):
            if had_own:
                setattr(module, name, previous)
            else:
                module.__dict__.pop(name, None)
        self._patched = []


def add_penalty(pruner: Pruner, output: Any, global_step: int) -> Any:
    """``training_step``'s output with ``pruner.penalty()`` added to its loss (a tensor, or a dict's ``"loss"``);
    ``None`` (the user skips the batch) passes through. The loss is checked for NaN/inf first."""
    if output is None:
        return None
    loss = output.get("loss") if isinstance(output, Mapping) else output
    pruner.check_loss(loss, "loss returned by `training_step`", global_step)
    penalty = pruner.penalty()
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


def check_automatic_optimization(pl_module: pl.LightningModule) -> None:
    """Refuse manual optimization: the callback adds the penalty to ``training_step``'s loss and the gate groups to
    the one optimizer Lightning steps."""
    if not pl_module.automatic_optimization:
        raise PruningConfigError(
            f"PruningCallback needs automatic optimization, but {type(pl_module).__name__} sets "
            "`automatic_optimization = False`. With manual optimization, attach the gates yourself: "
            "`pruner = lightning_prune.attach(self.model, config)` in `__init__`, add `pruner.penalty()` "
            "to the loss, optimize `pruner.param_groups(...)` and call `pruner.step()` after `opt.step()`."
        )


def the_optimizer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.optim.Optimizer, list[Any]]:
    """The run's one optimizer and the learning-rate schedulers built on it.

    Raises:
        PruningConfigError: ``configure_optimizers`` returned several optimizers (or none).
    """
    if len(trainer.optimizers) != 1:
        raise PruningConfigError(
            f"{type(pl_module).__name__}.configure_optimizers returned {len(trainer.optimizers)} optimizers; "
            "PruningCallback needs exactly one (automatic optimization) to add the gate groups to. "
            "Return one optimizer over `self.parameters()`."
        )
    optimizer = trainer.optimizers[0]
    return optimizer, [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]


def eval_mode_warning(pl_module: nn.Module, model_path: str | None, model: nn.Module) -> str | None:
    """A warning when the pruned model is in eval mode as training starts (``None`` when it trains)."""
    if model.training:
        return None
    return (
        f"lightning-prune: `{type(pl_module).__name__}.{model_path}` is in eval mode at the start of "
        "training (Hugging Face `from_pretrained` returns models in eval mode, and Lightning keeps submodule "
        "modes), so the masks are deterministic and the gates learn from the penalty only. Call "
        "`model.train()` in your LightningModule's `__init__` or `on_train_start`."
    )


def check_strategy(trainer: pl.Trainer) -> None:
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


def check_sharded(trainer: pl.Trainer, pruner: Pruner) -> None:
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


def known_total_steps(trainer: pl.Trainer) -> int | None:
    """The run's optimizer steps when the trainer knows them before training (``max_steps``, or epochs × batches)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # an iterable without a length, or a loop Lightning cannot size: unknown
        return None
    return int(total) if total != float("inf") else None


def check_gate_state(pl_module: nn.Module, checkpoint: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose ``state_dict`` has no gates, or gates of other shapes than ``pl_module``'s.

    ``saved``: the callback's state in the checkpoint (names the structures it was trained with).

    Raises:
        PruningConfigError: the message lists the differing shapes, or says how to prune from a dense checkpoint.
    """
    state = checkpoint.get("state_dict", {})
    current = {k: tuple(v.shape) for k, v in pl_module.state_dict().items() if STATE_ATTRIBUTE in k.split(".")}
    stored = {k: tuple(v.shape) for k, v in state.items() if STATE_ATTRIBUTE in k.split(".")}
    if not stored:
        raise PruningConfigError(
            "The checkpoint has no pruning gates (no `pruning_gates` entries in its state_dict): it was not "
            "written by a run with PruningCallback. To prune from a dense checkpoint, load its weights into the "
            "module before `trainer.fit` (e.g. `Module.load_from_checkpoint`) instead of passing `ckpt_path`."
        )
    keys = sorted(set(stored) | set(current))
    bad = {k: (stored.get(k), current.get(k)) for k in keys if stored.get(k) != current.get(k)}
    if bad:
        raise PruningConfigError(
            f"The checkpoint's gates do not match this config's (checkpoint shape, current shape): {bad}. "
            f"Use the pruning config (structures {saved.get('config', {}).get('structures', '?')}) it was "
            "trained with, or start a new run without `ckpt_path`."
        )


def log_statistics(
    trainer: pl.Trainer, pl_module: pl.LightningModule, driver: TrainingDriver, log_stats: bool, prog_bar: bool
) -> None:
    """Log the driver's statistics under ``pruning/`` (``log_stats``) and show where the masks are, where the schedule
    wants them and the pull of the first multiplier in the progress bar (``prog_bar``), on the steps Lightning logs."""
    if not (log_stats or prog_bar):
        return
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and not (connector.should_update_logs or trainer.fast_dev_run):
        return
    stats = driver.statistics()
    if log_stats:
        pl_module.log_dict(driver.log_stats_dict(stats), on_step=True, on_epoch=False, logger=True, batch_size=1)
    if prog_bar:
        bar = {"sparsity": stats["exact_sparsity"], "target": stats["target_sparsity"]}
        if "lambda_1" in stats:
            bar["λ1"] = stats["lambda_1"]
        pl_module.log_dict(bar, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)


def export_after_fit(
    trainer: pl.Trainer, pl_module: pl.LightningModule, driver: TrainingDriver, callback_state: Callable[[], Any]
) -> None:
    """The end of ``fit`` on every rank: rank 0 exports (a failure saves a rescue checkpoint first, see
    :func:`rescue_checkpoint`; ``callback_state`` gives the callback's ``(state_key, state_dict())``) and sends the
    plot to the loggers; no rank leaves before the export exists, and every rank raises when it failed."""
    warning = driver.finish(trainer.global_step)
    if warning is not None:
        driver.warn(warning)

    def rescue(error: Exception) -> Exception:
        return rescue_checkpoint(driver.export_dir, pl_module, callback_state(), trainer.global_step, error)

    plot_path, failure = driver.export(trainer.is_global_zero, rescue)
    if trainer.is_global_zero and driver.plot and failure is None:
        log_kept_units_figure(trainer, driver.pruner, plot_path)
    trainer.strategy.barrier("lightning_prune.export")
    if trainer.strategy.broadcast(failure is not None, src=0):  # every rank stops, none hangs at a barrier
        if failure is not None:
            raise failure
        raise RuntimeError("lightning-prune: the export failed on rank 0 (see its error); nothing was exported.")


def rescue_checkpoint(
    export_dir: Path, pl_module: nn.Module, callback_state: tuple[str, Any], global_step: int, error: Exception
) -> Exception:
    """Save the trained module beside ``export_dir`` when the export fails, and return the error to raise (the
    original error, with the rescue path and the command that exports it later in its message).

    ``callback_state``: ``(state_key, state_dict())`` of the callback, so that ``export_checkpoint`` reads it back.
    """
    rescue = export_dir.with_name(f"{export_dir.name}.rescue.ckpt")
    key, state = callback_state
    try:
        torch.save(
            {"state_dict": pl_module.state_dict(), "callbacks": {key: state}, "global_step": global_step}, rescue
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


def log_kept_units_figure(trainer: pl.Trainer, pruner: Pruner, plot_path: Path | None) -> None:
    """Send the kept-units heatmap to the trainer's TensorBoard (as a figure) and wandb (as an image) loggers."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]
    if not loggers:
        return
    import matplotlib.pyplot as plt

    from lightning_prune.integrations.plots import kept_units_figure, pruner_kept_units, pruner_plot_title, pruner_units

    kept, units, title = pruner_kept_units(pruner), pruner_units(pruner), pruner_plot_title(pruner)
    if plot_path is None:
        from lightning_prune.integrations.plots import save_kept_units_plot

        plot_path = Path(tempfile.mkdtemp(prefix="lightning_prune_plot_")) / "kept_units.png"
        save_kept_units_plot(kept, units, plot_path, title=title)
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            fig = kept_units_figure(kept, units, title=title)
            lg.experiment.add_figure("pruning/kept_units", fig, global_step=trainer.global_step, close=True)
            plt.close(fig)
        else:
            lg.log_image(key="pruning/kept_units", images=[str(plot_path)], step=trainer.global_step)
