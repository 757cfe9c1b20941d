"""Compresso's config: L0 masks over a frozen base model trained through LoRA.

Guo et al. 2023, "Compresso: Structured Pruning with Collaborative Prompting Learns Compact Large Language
Models" (arXiv 2310.05015): the base LLM stays frozen, LoRA adapters (on ``q_proj`` and ``v_proj``, r=8, α=8 in
the paper) and hard-concrete L0 masks on heads, FFN channels and hidden dims are trained together, with CoFi's
Lagrangian size target; a collaborative prompt (:mod:`lightning_prune.methods.compresso.prompt`) tells the
model it is being pruned, in training and in evaluation alike. An optional second stage fine-tunes the LoRA
adapters with the masks fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from lightning_prune.errors import UnsupportedModelError
from lightning_prune.methods.base import register_method
from lightning_prune.methods.l0 import L0Config

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

#: Substring that peft gives every LoRA parameter name (``lora_A``, ``lora_B``, ``lora_embedding_A``, ...).
LORA_MARK = "lora_"


def check_frozen_base_with_lora(model: nn.Module, require_frozen_base: bool = True) -> None:
    """Refuse a model that is not "frozen base + LoRA" (Compresso trains only LoRA and the masks).

    Raises:
        UnsupportedModelError: the model has no LoRA parameters, or (with ``require_frozen_base``) some
            non-LoRA weights are trainable; the message names them and the fix.
    """
    names = [(n, p) for n, p in model.named_parameters()]
    lora = [n for n, _ in names if LORA_MARK in n]
    if not lora:
        raise UnsupportedModelError(
            "CompressoConfig needs a peft LoRA model (a frozen base trained through LoRA), but the model has no "
            "LoRA parameters. Wrap it first: `model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=8, "
            "target_modules=['q_proj', 'v_proj']))`, then attach. For full-weight pruning use L0Config."
        )
    if not any(p.requires_grad for n, p in names if LORA_MARK in n):
        raise UnsupportedModelError(
            f"The model's LoRA parameters (e.g. {lora[0]!r}) are all frozen, so only the masks would train. "
            "Call `model.train()`/leave peft's defaults so that the adapters require grad."
        )
    trainable_base = [n for n, p in names if p.requires_grad and LORA_MARK not in n]
    if require_frozen_base and trainable_base:
        raise UnsupportedModelError(
            f"Compresso keeps the base model frozen, but {len(trainable_base)} non-LoRA parameter(s) require grad "
            f"(e.g. {trainable_base[:3]}). peft's get_peft_model freezes them; do not re-enable them, or pass "
            "`require_frozen_base=False` to train them too (then it is no longer Compresso's memory budget)."
        )


@register_method("compresso")
@dataclass
class CompressoConfig(L0Config):
    """Compresso (Guo et al. 2023): L0 masks + LoRA on a frozen base, with a Lagrangian size target.

    Defaults are the paper's (``scripts/train.sh`` of the reference code): 30% of the prunable parameters
    removed, masks on ``heads``, ``ffn`` and ``hidden``; gates initialised almost open (``droprate_init=0.01``,
    i.e. ``log α = log(0.99/0.01) ≈ 4.6``); mask and multiplier learning rate 0.1 (``reg_learning_rate``).
    The paper warms the target up over half of the pruning epochs (4 of 8): set ``warmup_steps`` to half of
    your pruning steps. Use the LoRA learning rate of the paper (5e-5 for pruning, 4e-4 for fine-tuning) for the
    ``lr`` of :meth:`~lightning_prune.Pruner.param_groups`.

    Fine-tuning with fixed masks (the paper's second stage, 3 epochs): with Lightning pass
    ``PruningCallback(config, freeze_after_steps=N)``; in plain PyTorch call ``pruner.set_phase("frozen")``.
    Masks are then deterministic and the gates and multipliers stop moving while LoRA keeps training.

    Args (in addition to :class:`~lightning_prune.L0Config`):
        require_frozen_base: refuse a model whose non-LoRA weights are trainable (the method's premise). A model
            without LoRA is always refused (use :class:`~lightning_prune.L0Config` for full-weight pruning).

    Example::

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        pruner = lightning_prune.attach(model, CompressoConfig(warmup_steps=1000))
        prompt = CollaborativePrompt.from_tokenizer(tokenizer)
        loader = DataLoader(train_set, batch_size=1, collate_fn=prompt.wrap_collate(collate))
    """

    structures: tuple[str, ...] = ("heads", "ffn", "hidden")
    init_log_alpha: float = math.log(0.99 / 0.01)  # droprate_init 0.01: the model starts (almost) unpruned
    gate_lr: float = 0.1
    lagrangian_lr: float | None = 0.1
    require_frozen_base: bool = True

    def __post_init__(self) -> None:
        if self.target_sparsity is None and self.target_architecture is None:
            self.target_sparsity = 0.3  # the paper's main setting (LLaMA-7B → 5.4B)
        super().__post_init__()

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        # called by attach() before anything is added to the model, so a refused model is left untouched
        check_frozen_base_with_lora(pruner.model, self.require_frozen_base)
        return super().build_regularizer(pruner)
