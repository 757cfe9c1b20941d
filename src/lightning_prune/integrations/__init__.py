"""Integrations with training frameworks.

- :mod:`lightning_prune.integrations.driver`: :class:`TrainingDriver`, the framework-neutral run (phases, seeds,
  optimizer groups, post-step, statistics, export, resume records) that both callbacks below wrap;
  :mod:`~lightning_prune.integrations.schedule` its phase arithmetic, :mod:`~lightning_prune.integrations.resume`
  the checkpoint record, :mod:`~lightning_prune.integrations.facade` the driver's names on a callback.
- :mod:`lightning_prune.integrations.lightning`: :class:`PruningCallback` for Lightning's ``Trainer`` (and
  :mod:`~lightning_prune.integrations.lightning_support`, what it needs from Lightning besides its hooks).
- :mod:`lightning_prune.integrations.hf_trainer`: :class:`PruningTrainer` and :class:`PruningTrainerCallback` for
  a Hugging Face ``transformers.Trainer`` (no Lightning import).
- :mod:`lightning_prune.integrations.fsdp`: FSDP2 sharding that keeps the gates replicated.
- :mod:`lightning_prune.integrations.optim`: moving the gates into their own optimizer groups.
- :mod:`lightning_prune.integrations.plots`: the kept-units heatmap (matplotlib, Agg).
- :mod:`lightning_prune.integrations.modules`: a ready-made causal-LM ``LightningModule`` and a synthetic
  ``LightningDataModule`` used by the ``lightning-prune`` CLI and its example YAML.

Nothing here is imported by ``import lightning_prune``; Lightning is loaded only when these are used.
``PruningTrainer`` and ``PruningTrainerCallback`` are importable from this package lazily.
"""

_HF_TRAINER_NAMES = ("PruningTrainer", "PruningTrainerCallback")


def __getattr__(name: str):
    if name in _HF_TRAINER_NAMES:
        from lightning_prune.integrations import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_HF_TRAINER_NAMES)
