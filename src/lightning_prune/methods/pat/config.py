"""``PATConfig``: Pruning-Aware Tuning with Hybrid Sparsification Modules (HSMs) and one shared hidden mask.

Liu et al., "PAT: Pruning-Aware Tuning for Large Language Models", arXiv 2408.14721. PAT prunes the hidden
dimension (the residual stream) of a Llama-family model while it is fine-tuned (with or without LoRA):

* an HSM (identity + low-rank operator, per-HSM scale; :mod:`.hsm`) at every write to the residual stream;
* one trainable mask over hidden channels shared by all HSMs, with a rising temperature, a decaying bias and
  a freeze for the last 20% of the schedule (:mod:`.mask`);
* a count/polarisation loss on the mask and an identity loss on every HSM (:mod:`.losses`);
* at export, LoRA merged, HSMs folded into the embedding / ``o_proj`` / ``down_proj``, hidden channels sliced
  everywhere they are read, RMSNorms rescaled (:mod:`.fold`); the equivalence check still guards the result.

Unlike the Llama adapter's ``hidden`` structure (which normalises over the kept channels only), PAT's norms
see all ``d`` channels during training, as in the paper; the ``sqrt(d/d')`` rescale at export accounts for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.llama import LlamaAdapter
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.methods.base import PruningConfig, positive_float, register_method
from lightning_prune.methods.pat.fold import fold_hsms_, rescale_norm_eps_
from lightning_prune.methods.pat.hsm import build_hsms, install_hsm_hooks
from lightning_prune.methods.pat.losses import HSM_ATTRIBUTE, PATRegularizer
from lightning_prune.structures import StructureSpec

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

#: Llama-family layouts PAT supports: every RMSNorm reads the hidden stream (Qwen3's q_norm/k_norm, which share
#: ``rms_norm_eps`` but normalise head_dim, would break the exact ε rescale of the export).
PAT_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@register_method("pat")
@dataclass
class PATConfig(PruningConfig):
    """PAT: HSMs at every residual write, one shared trainable hidden-channel mask, folded at export.

    Args (in addition to :class:`~lightning_prune.PruningConfig`, whose ``target_sparsity`` PAT does not use):
        target_hidden_size: hidden channels to keep, ``d'`` (``--dimdown_dim``; 3072 of 4096 for Llama-2-7B,
            i.e. 25% pruned). Required; ``1 ≤ d' < d``.
        total_steps: ``T`` of the mask schedule in optimizer steps (``--global_step``, 10000 in the paper).
            The temperature rises from 1 to ~41 at ``0.8·T``, the bias reaches 0 at ``T/2``.
        freeze_fraction: the mask is frozen (no change, no gradient) from ``freeze_fraction·T`` on (0.8).
        hsm_rank: rank ``r`` of every HSM's low-rank operator (200 in the authors' code); ``r ≤ d``.
        count_weight: weight of the kept-count term of the mask loss (10).
        identity_weight: weight of the identity loss summed over all HSMs (1).
        gate_lr: learning rate of the mask logits (the paper trains everything with lr 5e-5).

    The HSM parameters are in ``model.pruning_gates.method_modules`` (so checkpoints carry them) and get the
    optimizer group ``"lightning_prune.modules"`` from :meth:`Pruner.param_groups` (model lr, no weight decay).

    Example::

        pruner = lightning_prune.attach(peft_model, lightning_prune.PATConfig(target_hidden_size=3072,
                                                                                total_steps=10000))
    """

    target_hidden_size: int | None = None
    total_steps: int = 10000
    freeze_fraction: float = 0.8
    hsm_rank: int = 200
    count_weight: float = 10.0
    identity_weight: float = 1.0
    target_sparsity: float = 0.0
    structures: tuple[str, ...] = ("hidden",)
    match_target: bool = False
    gate_lr: float = 5e-5

    gate_kind = "pat_mask"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.structures != ("hidden",):
            raise PruningConfigError(
                f"PAT prunes the hidden channels only: `structures` must be ('hidden',), got {self.structures}."
            )
        if self.target_sparsity != 0.0:
            raise PruningConfigError(
                f"PAT's target is a hidden size, not a sparsity: got `target_sparsity`={self.target_sparsity}. "
                "HINT: pass `target_hidden_size` (e.g. 3072 of 4096) and leave `target_sparsity` at 0."
            )
        if self.match_target or self.keep_units:
            raise PruningConfigError(
                "PAT learns its kept count through the mask loss: `match_target` must be False and `keep_units` "
                f"empty, got match_target={self.match_target}, keep_units={self.keep_units}."
            )
        d = self.target_hidden_size
        if not _is_int(d) or d < 1:
            raise PruningConfigError(
                f"`target_hidden_size` must be a positive int (hidden channels to keep), got {d!r}. "
                "HINT: 3072 keeps 75% of Llama-2-7B's 4096 channels."
            )
        if not _is_int(self.total_steps) or self.total_steps < 2:
            raise PruningConfigError(
                f"`total_steps` must be an int >= 2 (optimizer steps of the mask schedule), got {self.total_steps!r}."
            )
        f = self.freeze_fraction
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0.0 < f <= 1.0:
            raise PruningConfigError(f"`freeze_fraction` must be in (0, 1] (0.8 in the paper), got {f!r}.")
        if not _is_int(self.hsm_rank) or self.hsm_rank < 1:
            raise PruningConfigError(f"`hsm_rank` must be a positive int, got {self.hsm_rank!r}.")
        for name in ("count_weight", "identity_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PruningConfigError(f"`{name}` must be a non-negative number, got {value!r}.")
        positive_float(self.gate_lr, "gate_lr")

    # -- what the engine asks ----------------------------------------------------------------------------
    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "freeze_fraction": self.freeze_fraction}

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        """Checks the model (before anything is attached to it) and returns the PAT penalty."""
        self._check_model(pruner)
        d = pruner.adapter.hidden_size
        keep = torch.zeros(1, d)
        keep[0, : self.target_hidden_size] = 1.0
        target = float(pruner.cost.sparsity({"hidden": keep}, self.target))
        return PATRegularizer(self.target_hidden_size, self.count_weight, self.identity_weight, target)

    def adapter_hook_structures(self, structures: set[str]) -> set[str]:
        # PAT's own hooks mask the residual writes (after the HSMs); the adapter's `hidden` hooks would also
        # renormalise the norms over the kept channels, which PAT does not do in training.
        return set()

    def install_hooks(self, pruner: Pruner) -> list[tuple[str, nn.Module, Any]]:
        """Creates the HSMs inside ``pruner.state`` and hooks them (with the shared mask) on every residual write."""
        adapter = pruner.adapter
        device = pruner.state.step.device
        hsms = build_hsms(adapter.hidden_size, self.hsm_rank, adapter.num_layers).to(device)
        pruner.state.add_module(HSM_ATTRIBUTE, hsms)
        pruner.gates["hidden"].bind_step(pruner.state)
        return install_hsm_hooks(pruner, hsms)

    def build_compact(
        self, pruner: Pruner, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Fold the HSMs and rescale the norms, then let the adapter slice the hidden channels."""
        adapter = pruner.adapter
        d = adapter.hidden_size
        kept = int(masks["hidden"].sum())
        if kept == 0:
            raise PruningConfigError(
                "PAT's mask prunes every hidden channel (all logits < 0), so there is no model to export. "
                "Raise `count_weight` or train longer so the count loss reaches `target_hidden_size`."
            )
        fold_hsms_(state, getattr(pruner.state, HSM_ATTRIBUTE), adapter.prefix, adapter.num_layers, kept, d)
        compact, info = adapter.build_compact(state, masks)
        rescale_norm_eps_(compact, kept, d)
        return compact, info

    def _check_model(self, pruner: Pruner) -> None:
        adapter = pruner.adapter
        family = getattr(adapter, "family", None)
        if not isinstance(adapter, LlamaAdapter) or family not in PAT_MODEL_TYPES:
            raise UnsupportedModelError(
                f"PAT supports the Llama family ({', '.join(PAT_MODEL_TYPES)}); got the {adapter.name} adapter "
                f"(model_type={family or getattr(getattr(adapter.model, 'config', None), 'model_type', None)!r}). "
                "Use L0Config with structures=('hidden',) to prune the hidden size of other models."
            )
        if adapter.tied:
            raise UnsupportedModelError(
                "PAT folds the embedding HSM into the embedding only, so the LM head can no longer share its "
                "weight: the model ties them (tie_word_embeddings=True). Untie them before attaching "
                "(e.g. model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone()) and set "
                "config.tie_word_embeddings=False)."
            )
        d = adapter.hidden_size
        if self.target_hidden_size >= d:
            raise PruningConfigError(
                f"`target_hidden_size`={self.target_hidden_size} must be smaller than the model's hidden_size={d} "
                f"(it is the number of channels to keep), e.g. {int(0.75 * d)} to prune 25%."
            )
        if self.hsm_rank > d:
            raise PruningConfigError(
                f"`hsm_rank`={self.hsm_rank} exceeds hidden_size={d}: W1 W1ᵀ = I needs rank <= hidden_size. "
                f"Use e.g. hsm_rank={max(1, d // 20)} (the paper uses 200 for 4096)."
            )
