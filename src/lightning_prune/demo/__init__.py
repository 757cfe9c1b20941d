"""The README's main job: ``python -m lightning_prune.demo`` (see :mod:`lightning_prune.demo.main`)."""
