"""Folding PAT's HSMs into the merged weights before the adapter slices the hidden channels.

Liu et al., "PAT: Pruning-Aware Tuning for Large Language Models", arXiv 2408.14721 (and the authors' merge
script). With ``M = diag(s)(I + W2 W1)`` the linear map of an HSM (``y = M x``):

* embedding ``E ← E Mᵀ`` (a token's row ``e`` becomes ``M e``);
* ``o_proj`` and ``down_proj``: ``W ← M W``, ``b ← M b``;
* every RMSNorm weight ``w ← w · sqrt(d / d')`` and its epsilon ``ε ← ε · d / d'``.

Why the norms change: in the gated model the residual stream is 0 on pruned channels and the norms average over
all ``d`` channels, ``x / sqrt(S/d + ε)``; the compact norm averages over the ``d'`` kept ones,
``x / sqrt(S/d' + ε')``. Multiplying ``w`` by ``sqrt(d/d')`` and ``ε`` by ``d/d'`` makes them equal exactly (the
authors rescale ``w`` only, which leaves a relative error of about ``ε(1 − d'/d) / (2 S/d)``: visible on small
activations). The mask itself (zeros on pruned rows, then slicing of every reader of the hidden stream: q, k,
v, gate, up, the LM head, the norms) is the Llama adapter's ``hidden`` export. The attention inner width and
the MLP width do not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping

import torch
from torch import nn

from lightning_prune.adapters.llama.layout import LAYER_NORMS
from lightning_prune.export.merge import MergedWeights
from lightning_prune.methods.pat.hsm import LAYER_WRITES


@torch.no_grad()
def fold_hsms_(
    state: MutableMapping[str, torch.Tensor],
    hsms: nn.ModuleDict,
    prefix: str,
    num_layers: int,
    kept: int,
    hidden: int,
) -> None:
    """Fold every HSM into ``state`` (plain model keys under ``prefix``) and rescale the norm weights, in place.

    On the export's :class:`~lightning_prune.export.merge.MergedWeights` the folds are registered as transforms
    that run when the adapter reads each weight, so no folded full-size copy waits for its turn."""

    def update(key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if isinstance(state, MergedWeights):
            state.transform(key, torch.no_grad()(fn))
        else:
            state[key] = fn(state[key])

    def fold(site: str, transpose: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        def apply(value: torch.Tensor) -> torch.Tensor:
            matrix = hsms[site].matrix().to(value.device)
            folded = value.double() @ matrix.t() if transpose else matrix @ value.double()
            return folded.to(value.dtype)

        return apply

    update(f"{prefix}embed_tokens.weight", fold("embed", transpose=True))
    for l in range(num_layers):
        for kind, module in LAYER_WRITES:
            site, base = f"{kind}_{l}", f"{prefix}layers.{l}.{module}"
            update(f"{base}.weight", fold(site))
            if state.get(f"{base}.bias") is not None:
                update(f"{base}.bias", fold(site))  # M b: the same product on a vector
    factor = math.sqrt(hidden / kept)
    inner = [f"{prefix}layers.{l}.{n}.weight" for l in range(num_layers) for n in LAYER_NORMS]
    norms = [f"{prefix}norm.weight", *inner]
    for key in norms:
        update(key, lambda value: (value.double() * factor).to(value.dtype))


def rescale_norm_eps_(model: nn.Module, kept: int, hidden: int) -> None:
    """Set ``ε ← ε · d/d'`` on every RMSNorm over the hidden stream of the compact model and in its config."""
    eps = float(model.config.rms_norm_eps) * hidden / kept
    model.config.rms_norm_eps = eps
    backbone = model.base_model
    norms = [backbone.norm] + [getattr(layer, n) for layer in backbone.layers for n in LAYER_NORMS]
    for norm in norms:
        norm.variance_epsilon = eps
