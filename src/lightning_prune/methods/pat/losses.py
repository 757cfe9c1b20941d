"""PAT's penalty terms: the mask loss (kept count + polarisation) and the identity loss summed over all HSMs.

Liu et al., "PAT: Pruning-Aware Tuning for Large Language Models", arXiv 2408.14721, §3::

    L_mask = w_c · |Σ_i 1[m_i ≥ 0] − d'| / d'  +  mean_{m>0} (m − 0.5)²  +  mean_{m≤0} (m + 0.5)²
    L_id   = w_id · Σ_HSMs MSE(W1 W1ᵀ, I)

The count uses a straight-through estimator (forward ``1[m ≥ 0]``, backward identity), so its gradient pushes
every logit towards the target count; the polarisation terms pull the logits away from 0. The authors' released
loop overwrote the identity loss per layer, so only two HSMs counted (their GitHub issue #4); here every HSM
counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

#: Attribute of :class:`~lightning_prune.pruner.PruningState` that holds the HSMs.
HSM_ATTRIBUTE = "method_modules"


class _Binarize(torch.autograd.Function):
    """``1[x ≥ 0]`` forward, identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def mask_loss(logits: torch.Tensor, target: int, count_weight: float = 10.0) -> torch.Tensor:
    """``L_mask`` for mask logits ``m`` and the kept-channel target ``d'``.

    An empty side of the polarisation (e.g. no ``m > 0`` at initialisation, where every logit is 0) adds 0
    instead of the NaN of an empty mean.
    """
    m = logits.float().flatten()
    count = _Binarize.apply(m).sum()
    loss = count_weight * (count - target).abs() / target
    positive = m > 0
    for side, centre in ((positive, 0.5), (~positive, -0.5)):
        if bool(side.any()):
            loss = loss + (m[side] - centre).pow(2).mean()
    return loss


def identity_loss(hsms: nn.ModuleDict) -> torch.Tensor:
    """``Σ_HSMs MSE(W1 W1ᵀ, I)`` over **all** HSMs (not the last one only, as in the released code)."""
    return torch.stack([hsm.identity_loss() for hsm in hsms.values()]).sum()


class PATRegularizer(nn.Module):
    """``forward(pruner)`` returns ``{"pat_mask": L_mask, "pat_identity": L_id}``.

    The mask term is left out once the mask is frozen, so the logits get no gradient at all (an optimizer with
    momentum would otherwise still move them). It holds no parameters: the HSMs live in
    ``pruner.state.method_modules`` and train in their own optimizer group.

    Args:
        target_hidden_size: kept hidden channels ``d'``.
        count_weight: weight of the count term (10 in the authors' code).
        identity_weight: weight of the summed identity loss (1 in the authors' code).
        target_sparsity: fraction of prunable parameters that ``d'`` removes (reported as the target).
    """

    def __init__(
        self, target_hidden_size: int, count_weight: float, identity_weight: float, target_sparsity: float
    ) -> None:
        super().__init__()
        self.target_hidden_size = target_hidden_size
        self.count_weight = count_weight
        self.identity_weight = identity_weight
        self.target_sparsity = target_sparsity

    def current_target(self, step: int) -> float:
        return self.target_sparsity

    def forward(self, pruner: Pruner) -> dict[str, torch.Tensor]:
        gate = pruner.gates["hidden"]
        terms: dict[str, torch.Tensor] = {}
        if not gate.is_frozen():
            terms["pat_mask"] = mask_loss(gate.logits, self.target_hidden_size, self.count_weight)
        terms["pat_identity"] = self.identity_weight * identity_loss(getattr(pruner.state, HSM_ATTRIBUTE))
        return terms
