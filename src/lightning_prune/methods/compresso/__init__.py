"""Compresso: structured pruning with collaborative prompting (Guo et al. 2023, arXiv 2310.05015)."""

from lightning_prune.methods.compresso.config import CompressoConfig, check_frozen_base_with_lora
from lightning_prune.methods.compresso.prompt import IGNORE_INDEX, PRUNING_PROMPT, CollaborativePrompt

__all__ = ["CompressoConfig", "CollaborativePrompt", "PRUNING_PROMPT", "IGNORE_INDEX", "check_frozen_base_with_lora"]
