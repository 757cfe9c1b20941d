"""Integrations with training frameworks.

- :mod:`lightning_prune.integrations.lightning`: :class:`PruningCallback` for Lightning's ``Trainer``.
- :mod:`lightning_prune.integrations.optim`: moving the gates into their own optimizer groups.
- :mod:`lightning_prune.integrations.plots`: the kept-units heatmap (matplotlib, Agg).
- :mod:`lightning_prune.integrations.modules`: a ready-made causal-LM ``LightningModule`` and a synthetic
  ``LightningDataModule`` used by the ``lightning-prune`` CLI and its example YAML.

Nothing here is imported by ``import lightning_prune``; Lightning is loaded only when these are used.
"""
