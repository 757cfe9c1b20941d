"""The ``lightning-prune`` command, built on ``LightningCLI``.

Every Lightning subcommand works (``fit``, ``validate``, ``test``, ``predict``), with
:class:`~lightning_prune.PruningCallback` and its :class:`~lightning_prune.L0Config` configurable from YAML
under ``trainer.callbacks`` (``class_path: lightning_prune.L0Config`` selects the method). One subcommand is
added:

- ``export``: builds the model from the same config, attaches the gates, restores a checkpoint of the pruned
  run and writes the compact model, its report and the kept-units plot.

Example::

    lightning-prune fit --config examples/tiny_llama_prune.yaml
    lightning-prune export --config examples/tiny_llama_prune.yaml \\
        --ckpt_path outputs/tiny_llama/checkpoints/last.ckpt --export_dir outputs/tiny_llama/compact-from-ckpt

The model is any ``LightningModule`` given by ``class_path`` (for example
:class:`~lightning_prune.integrations.modules.CausalLMModule`), and the data any ``LightningDataModule``.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_prune.errors import PruningConfigError
from lightning_prune.integrations.lightning import PruningCallback
from lightning_prune.methods.base import PruningConfig


class PruningTrainer(Trainer):
    """A ``Trainer`` with an :meth:`export` method, so that ``LightningCLI`` offers it as a subcommand."""

    def export(
        self,
        model: LightningModule,
        ckpt_path: str,
        export_dir: str | None = None,
        overwrite: bool = False,
        datamodule: LightningDataModule | None = None,
    ) -> Path:
        """Write the compact model of a checkpoint trained with PruningCallback.

        Args:
            model: the ``LightningModule``, built as for training (the gates are attached here).
            ckpt_path: a checkpoint written during ``fit`` with the same ``PruningCallback`` config.
            export_dir: output directory; defaults to the callback's ``export_dir``.
            overwrite: replace a non-empty ``export_dir``.
            datamodule: unused; accepted because ``LightningCLI`` passes it to every subcommand.

        Raises:
            PruningConfigError: the trainer has no (or several) ``PruningCallback``, or the checkpoint was
                written with another pruning config.
        """
        callbacks = [c for c in self.callbacks if isinstance(c, PruningCallback)]
        if len(callbacks) != 1:
            raise PruningConfigError(
                f"`export` needs exactly one PruningCallback under `trainer.callbacks` (found {len(callbacks)}): "
                "pass the same --config as for `fit`."
            )
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"`ckpt_path` {ckpt_path!r} is not a file.")
        if not self.is_global_zero:
            return Path(export_dir or callbacks[0].export_dir or "")
        return callbacks[0].export_checkpoint(model, ckpt_path, export_dir, overwrite)


class PruningCLI(LightningCLI):
    """``LightningCLI`` with the ``export`` subcommand (see the module docstring)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}


def _enable_config_subclasses() -> None:
    # `config: PruningConfig` is a dataclass; jsonargparse takes subclasses (L0Config, ...) only when told
    try:
        from jsonargparse import set_parsing_settings
    except ImportError:  # pragma: no cover - jsonargparse < 4.4x parses dataclass subclasses by class_path anyway
        return
    try:
        set_parsing_settings(subclasses_enabled=[PruningConfig])
    except TypeError:  # pragma: no cover - older signature without `subclasses_enabled`
        pass


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console command; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _enable_config_subclasses()
    PruningCLI(
        trainer_class=PruningTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
