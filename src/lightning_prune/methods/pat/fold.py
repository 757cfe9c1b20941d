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

import torch
from torch import nn

NORM_KEYS = ("input_layernorm", "post_attention_layernorm")


@torch.no_grad()
def fold_hsms_(
    state: dict[str, torch.Tensor], hsms: nn.ModuleDict, prefix: str, num_layers: int, kept: int, hidden: int
) -> None:
    """Fold every HSM into ``state`` (plain model keys under ``prefix``) and rescale the norm weights, in place."""

    def apply(key: str, matrix: torch.Tensor, transpose: bool = False) -> None:
        value = state[key]
        folded = value.double() @ matrix.t() if transpose else matrix @ value.double()
        state[key] = folded.to(value.dtype)

    apply(f"{prefix}embed_tokens.weight", hsms["embed"].matrix().to(state[f"{prefix}embed_tokens.weight"].device), True)
    for l in range(num_layers):
        for site, module in ((f"attn_{l}", "self_attn.o_proj"), (f"mlp_{l}", "mlp.down_proj")):
            base = f"{prefix}layers.{l}.{module}"
            matrix = hsms[site].matrix().to(state[f"{base}.weight"].device)
            apply(f"{base}.weight", matrix)
            if state.get(f"{base}.bias") is not None:
                state[f"{base}.bias"] = (matrix @ state[f"{base}.bias"].double()).to(state[f"{base}.bias"].dtype)
    factor = math.sqrt(hidden / kept)
    norms = [f"{prefix}norm.weight"] + [f"{prefix}layers.{l}.{n}.weight" for l in range(num_layers) for n in NORM_KEYS]
    for key in norms:
        state[key] = (state[key].double() * factor).to(state[key].dtype)


def rescale_norm_eps_(model: nn.Module, kept: int, hidden: int) -> None:
    """Set ``ε ← ε · d/d'`` on every RMSNorm over the hidden stream of the compact model and in its config."""
    eps = float(model.config.rms_norm_eps) * hidden / kept
    model.config.rms_norm_eps = eps
    backbone = model.base_model
    norms = [backbone.norm] + [getattr(layer, n) for layer in backbone.layers for n in NORM_KEYS]
    for norm in norms:
        norm.variance_epsilon = eps
