"""Pruning methods: validated configs registered by name (see :func:`register_method`)."""

from lightning_prune.methods.atp import ATPConfig, ATPController
from lightning_prune.methods.base import PruningConfig, available_methods, method_config_class, register_method
from lightning_prune.methods.compresso import CollaborativePrompt, CompressoConfig
from lightning_prune.methods.gradual import GradualConfig
from lightning_prune.methods.l0 import L0Config
from lightning_prune.methods.pat import PATConfig
from lightning_prune.methods.polarization import PolarizationConfig
from lightning_prune.methods.ste import STEConfig

__all__ = [
    "PruningConfig",
    "L0Config",
    "GradualConfig",
    "PolarizationConfig",
    "STEConfig",
    "ATPConfig",
    "ATPController",
    "PATConfig",
    "CompressoConfig",
    "CollaborativePrompt",
    "register_method",
    "method_config_class",
    "available_methods",
]
