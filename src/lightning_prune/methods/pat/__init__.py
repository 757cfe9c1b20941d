"""PAT: Pruning-Aware Tuning with Hybrid Sparsification Modules (Liu et al., arXiv 2408.14721)."""

from lightning_prune.gates import register_gate
from lightning_prune.methods.pat.config import PAT_MODEL_TYPES, PATConfig
from lightning_prune.methods.pat.hsm import HybridSparsificationModule
from lightning_prune.methods.pat.losses import identity_loss, mask_loss
from lightning_prune.methods.pat.mask import PATMaskGate, mask_bias, temperature

register_gate("pat_mask")(PATMaskGate)

__all__ = [
    "PATConfig",
    "PATMaskGate",
    "HybridSparsificationModule",
    "PAT_MODEL_TYPES",
    "identity_loss",
    "mask_loss",
    "mask_bias",
    "temperature",
]
