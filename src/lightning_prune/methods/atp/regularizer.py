"""ATP's two losses and its control-phase state: the budget loss (generator) and the group lasso (LoRA).

From Lu et al., "All-in-One Tuning and Structural Pruning for Domain-Specific LLMs" (arXiv 2412.14426):

* **Budget** (generator update): with ``r`` the kept fraction of prunable parameters under the hard
  (straight-through) decisions (by default the noise-free eval decisions, see ``ATPConfig.budget_on``)
  and ``p = 1 − target_sparsity`` the kept target, ``R = log(max(r, p) / min(r, p)) = |log r − log p|``;
  the generator minimises ``task loss + w·R`` (``w = 5``). ``r`` comes from the engine's exact cost model,
  so it counts the coupled o_proj and down_proj input columns (and FLOPs with ``target="flops"``).
* **LoRA-aware group lasso** (LoRA update): the LoRA rows/columns that feed a pruned unit, which the frozen-path
  mask does not cover, are pushed to zero:
  ``GL = Σ_pruned ‖B_q,k,v,gate,up[c, :]‖ + ‖A_o,down[:, c]‖``, ``‖v‖ = sqrt(Σv² + 1e-8)``, averaged over layers.
  For the attention dims: a pruned ``qk_dims`` pair owns two ``B`` rows of q and of k in every head, a pruned
  ``v_dims`` dim a ``B`` row of v in every KV head and an ``A`` column of o_proj in every query head.
  Once they are exactly zero, the merged ``W + BA`` restricted to kept units computes what the LoRA update
  trained, so slicing it changes nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_prune.methods.atp.layout import Coupling

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.methods.atp.config import ATPConfig
    from lightning_prune.pruner import Pruner

MODES = ("generator", "lora")


def lora_factors(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(A, B)`` weights of every active peft LoRA adapter of ``module`` (none for a plain layer)."""
    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if lora_a is None or lora_b is None:
        return []
    return [(lora_a[n].weight, lora_b[n].weight) for n in getattr(module, "active_adapters", []) if n in lora_a]


def pruned_lora_slices(
    couplings: dict[str, list[Coupling]], masks: dict[str, torch.Tensor]
) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """``(weight, dim, index)`` of every LoRA factor slice that feeds a pruned unit.

    ``dim`` is the axis along which a group (one row of ``B`` or one column of ``A``) is normed: 1 for ``B``
    rows (out side), 0 for ``A`` columns (in side).
    """
    out = []
    for structure, items in couplings.items():
        mask = masks.get(structure)
        if mask is None:
            continue
        for c in items:
            idx = (c.expand(mask[c.layer].detach()) == 0).nonzero().flatten()
            if idx.numel() == 0:
                continue
            for a, b in lora_factors(c.module):
                if c.side == "out":
                    out.append((b, 1, idx.to(b.device)))
                else:
                    out.append((a, 0, idx.to(a.device)))
    return out


def group_norms(weight: torch.Tensor, dim: int, idx: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Smoothed L2 norms of the selected rows (``dim=1``) or columns (``dim=0``) of ``weight``."""
    groups = weight.index_select(1 - dim, idx).float()
    return torch.sqrt(groups.pow(2).sum(dim=dim) + eps)


class ATPRegularizer(nn.Module):
    """Holds the ATP step mode and control-phase state; ``forward(pruner)`` returns the mode's loss term.

    Persistent state (buffers, so a checkpoint resumes the control phase): generator steps taken, the number
    of consecutive steps with ``R ≤ plateau_tolerance``, and whether decisions are frozen.
    """

    def __init__(self, config: ATPConfig, couplings: dict[str, list[Coupling]], num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.couplings = couplings
        self.num_layers = num_layers
        #: ``"generator"``: masks on the merged path, budget loss; ``"lora"``: frozen-path masks, group lasso.
        self.mode = "generator"
        #: The unweighted budget loss ``R`` of the last generator-mode penalty (for the plateau test).
        self.last_ratio_loss: float | None = None
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("plateau_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def current_target(self, step: int) -> float:
        return self.config.target_sparsity  # ATP has no target warm-up: the budget loss is the schedule

    # -- the two terms ---------------------------------------------------------------------------------
    def kept_fraction(self, pruner: Pruner, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """``r``: kept fraction of prunable parameters (or FLOPs) under ``masks``, differentiable through them."""
        params, flops = pruner.cost.prunable(masks)
        if self.config.target == "flops":
            return torch.as_tensor(flops) / pruner.cost.dense_prunable_flops
        return torch.as_tensor(params) / pruner.cost.dense_prunable_params

    def ratio_loss(self, pruner: Pruner, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """``R = |log r − log p|`` with ``p = 1 − target_sparsity``."""
        r = self.kept_fraction(pruner, masks).clamp_min(1e-6)
        return (torch.log(r) - math.log(1.0 - self.config.target_sparsity)).abs().float()

    def group_lasso(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """``GL`` of the pruned units' LoRA rows/columns, averaged over layers (0 if nothing is pruned)."""
        total = torch.zeros(())
        for weight, dim, idx in pruned_lora_slices(self.couplings, masks):
            # − sqrt(eps): a zero group adds exactly 0 (same gradient), so the logged term reads 0 when done
            total = total.to(weight.device) + (group_norms(weight, dim, idx) - 1e-4).sum()
        return total / self.num_layers

    def group_lasso_weight(self) -> float:
        return self.config.group_lasso_final if bool(self.frozen) else self.config.group_lasso

    def forward(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        masks = {name: m for name in pruner.specs if (m := pruner.mask(name)) is not None}
        if not masks:  # no forward pass yet, or the dense phase
            return {"budget": torch.zeros(())}
        if self.mode == "generator":
            if self.config.budget_on == "decisions":
                masks = {name: pruner.gates[name].decision() for name in masks}
            else:  # the forward's samples (soft ones in ATP's generator update) made binary, straight-through
                masks = {name: (m >= 0.5).to(m.dtype) + (m - m.detach()) for name, m in masks.items()}
            ratio = self.ratio_loss(pruner, masks)
            self.last_ratio_loss = float(ratio.detach())
            return {"budget": self.config.budget_weight * ratio}
        weight = self.group_lasso_weight()
        return {"group_lasso": weight * self.group_lasso(masks) if weight > 0 else torch.zeros(())}

    # -- control phase -----------------------------------------------------------------------------------
    @torch.no_grad()
    def record_generator_step(self, ratio_loss: float | None) -> bool:
        """Count a generator step; freeze the decisions after ``control_steps`` or a budget plateau. Returns
        whether the decisions are frozen now."""
        self.generator_steps.add_(1)
        if ratio_loss is not None and ratio_loss <= self.config.plateau_tolerance:
            self.plateau_count.add_(1)
        else:
            self.plateau_count.zero_()
        if int(self.generator_steps) >= self.config.control_steps or int(self.plateau_count) >= (
            self.config.plateau_steps
        ):
            self.frozen.fill_(True)
        return bool(self.frozen)

    @torch.no_grad()
    def proximal_(self, masks: dict[str, torch.Tensor], threshold: float) -> int:
        """Group soft-thresholding ``w ← w · max(0, 1 − threshold/‖w‖)`` of the pruned units' LoRA groups (the
        proximal operator of ``threshold·‖w‖``, as in ATP's released v2 code). Returns the groups now zero."""
        zeroed = 0
        for weight, dim, idx in pruned_lora_slices(self.couplings, masks):
            groups = weight.index_select(1 - dim, idx)
            norms = groups.float().pow(2).sum(dim=dim, keepdim=True).sqrt()
            factor = (1.0 - threshold / norms.clamp_min(1e-30)).clamp_min(0.0).to(groups.dtype)
            weight.index_copy_(1 - dim, idx, groups * factor)
            zeroed += int((factor == 0).sum())
        return zeroed
