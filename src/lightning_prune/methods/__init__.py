"""Pruning methods: validated configs registered by name (see :func:`register_method`)."""

from lightning_prune.methods.base import PruningConfig, available_methods, method_config_class, register_method
from lightning_prune.methods.l0 import L0Config

__all__ = ["PruningConfig", "L0Config", "register_method", "method_config_class", "available_methods"]
