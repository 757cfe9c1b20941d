"""lightning-prune: learned, in-training structured pruning for PyTorch, Lightning and transformers.

Attach trainable gates to a model, train with the penalty, and export a compact dense model that
computes what the gated model computed::

    import lightning_prune as lp

    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5))
    ...
    pruner.save_compact("compact/")
    compact = lp.load_compact("compact/")
"""

from lightning_prune.dependencies import check_dependency_versions

check_dependency_versions()  # first: an unsupported transformers/torch fails here with the fix, not later

from lightning_prune.adapters import ModelAdapter, available_adapters, register_adapter
from lightning_prune.errors import (
    AttachStateError,
    CorruptExportError,
    DependencyVersionError,
    ExportDirectoryError,
    ExportMismatchError,
    NonFiniteError,
    PruningConfigError,
    TrainingContractError,
    UnknownNameError,
    UnsupportedModelError,
)
from lightning_prune.export import ExportReport, export_report, load_compact, save_compact
from lightning_prune.export.history import load_pruned, save_pruned
from lightning_prune.gates import Gate, HardConcreteGate, register_gate
from lightning_prune.methods import ATPConfig, ATPController, L0Config, PATConfig, PruningConfig, register_method
from lightning_prune.methods.compresso import CollaborativePrompt, CompressoConfig
from lightning_prune.methods.gradual import GradualConfig
from lightning_prune.methods.polarization import PolarizationConfig
from lightning_prune.methods.ste import STEConfig
from lightning_prune.pruner import Pruner, attach
from lightning_prune.registry import Registry

__version__ = "0.1.0"


def __getattr__(name: str):
    # The Lightning integration imports lightning; load it only when asked for.
    if name == "PruningCallback":
        from lightning_prune.integrations.lightning import PruningCallback

        return PruningCallback
    raise AttributeError(f"module 'lightning_prune' has no attribute {name!r}")


__all__ = [
    "attach",
    "Pruner",
    "PruningConfig",
    "L0Config",
    "PolarizationConfig",
    "GradualConfig",
    "STEConfig",
    "ATPConfig",
    "PATConfig",
    "ATPController",
    "CompressoConfig",
    "CollaborativePrompt",
    "PruningCallback",
    "load_compact",
    "export_report",
    "save_compact",
    "save_pruned",
    "load_pruned",
    "ExportReport",
    "ModelAdapter",
    "register_adapter",
    "available_adapters",
    "Gate",
    "HardConcreteGate",
    "register_gate",
    "register_method",
    "PruningConfigError",
    "UnsupportedModelError",
    "ExportMismatchError",
    "CorruptExportError",
    "NonFiniteError",
    "AttachStateError",
    "DependencyVersionError",
    "ExportDirectoryError",
    "TrainingContractError",
    "UnknownNameError",
    "Registry",
]
