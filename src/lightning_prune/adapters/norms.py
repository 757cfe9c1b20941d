"""Normalisation over the kept hidden dims only, shared by the post-norm (BERT) and pre-norm (GPT-2) families."""

from __future__ import annotations

import torch
from torch import nn


def masked_layer_norm(module: nn.LayerNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` over the dims where ``mask != 0``, multiplied by ``mask`` (CoFi, Xia et al. 2022).

    Mean and variance are taken over the kept dims only (whatever ``x`` holds in the pruned ones), so with
    a binary mask the kept dims equal ``nn.LayerNorm`` applied to ``x[..., kept]`` with ``weight[kept]``
    and ``bias[kept]``, and the pruned dims are 0. A soft (training) mask scales the kept outputs, as
    CoFi's ``hidden_z`` multiplication after ``CoFiLayerNorm`` does.

    Args:
        module: the ``nn.LayerNorm`` whose weight, bias and eps are used (normalising the last dim).
        x: its input, ``(..., d)``.
        mask: the hidden mask, ``(d,)``.
    """
    dtype = x.dtype
    xf = x.float()
    m = mask.to(device=x.device, dtype=torch.float32)
    kept = (m != 0).float()
    count = kept.sum().clamp_min(1.0)
    mean = (xf * kept).sum(-1, keepdim=True) / count
    centred = (xf - mean) * kept  # (..., d), 0 in pruned dims
    var = centred.pow(2).sum(-1, keepdim=True) / count
    y = centred * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight.float()
    if module.bias is not None:
        y = y + module.bias.float()
    return (y * m).to(dtype)
