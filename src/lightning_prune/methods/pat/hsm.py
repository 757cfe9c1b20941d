"""Hybrid Sparsification Modules (HSMs) of PAT and the forward hooks that place them.

Liu et al., "PAT: Pruning-Aware Tuning for Large Language Models", arXiv 2408.14721, §3 and Figure 2. Every
write to the residual stream passes through an HSM followed by the shared mask::

    h = x + W2 W1 x          W1: (r, d) Kaiming, W2: (d, r) zero-initialised ("Hybrid-Identity-Operator")
    y = s ⊙ m̃ ⊙ h            s ∈ R^d per-HSM scale (init 1), m̃ the shared mask (mask.py)

The sites are the embedding output and, in every decoder layer, the outputs of ``o_proj`` and ``down_proj``
(before the residual add): ``1 + 2·num_layers`` HSMs. ``W1`` is kept close to orthonormal by the identity loss
``MSE(W1 W1ᵀ, I_r)``, so the scale ``s`` carries the per-channel scaling ("decouple transformation and
scaling"). The map ``diag(s)(I + W2 W1)`` is linear, so export folds it into the upstream weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.llama.layout import block_output

Hooks = list[tuple[str, nn.Module, RemovableHandle]]
#: Each layer's HSM sites: the name prefix and the projection (path in the layer) that writes the block's output to
#: the residual stream, read off the Llama layer table (``o_proj``, ``down_proj``).
LAYER_WRITES = (("attn", block_output("self_attn").path), ("mlp", block_output("mlp").path))


class HybridSparsificationModule(nn.Module):
    """``x ↦ s ⊙ (x + W2 W1 x)``: identity at initialisation (``W2 = 0``, ``s = 1``).

    Args:
        dim: hidden size ``d``.
        rank: rank ``r`` of the low-rank operator (200 for Llama-2-7B in the authors' code); ``r ≤ d`` so that
            ``W1 W1ᵀ = I`` is reachable.
    """

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, dim))  # W1
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's default init
        self.up = nn.Parameter(torch.zeros(dim, rank))  # W2: zero, so the HSM starts as the identity
        self.scale = nn.Parameter(torch.ones(dim))  # s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up, scale = (p.to(x.dtype) for p in (self.down, self.up, self.scale))
        return (x + F.linear(F.linear(x, down), up)) * scale  # (..., d)

    def matrix(self) -> torch.Tensor:
        """``diag(s)(I + W2 W1)`` in float64, the ``(d, d)`` map with ``y = M x`` (for folding at export)."""
        down, up, scale = (p.detach().double() for p in (self.down, self.up, self.scale))
        eye = torch.eye(down.shape[1], dtype=torch.float64, device=down.device)
        return scale[:, None] * (eye + up @ down)

    def identity_loss(self) -> torch.Tensor:
        """``MSE(W1 W1ᵀ, I_r)``: keeps ``W1`` orthonormal so ``s`` alone scales channels."""
        down = self.down.float()
        gram = down @ down.t()
        return F.mse_loss(gram, torch.eye(gram.shape[0], device=gram.device))

    def extra_repr(self) -> str:
        return f"dim={self.down.shape[1]}, rank={self.down.shape[0]}"


def site_names(num_layers: int) -> list[str]:
    """HSM names: ``embed``, then ``attn_<l>`` (after ``o_proj``) and ``mlp_<l>`` (after ``down_proj``)."""
    return ["embed"] + [f"{kind}_{l}" for l in range(num_layers) for kind, _ in LAYER_WRITES]


def build_hsms(dim: int, rank: int, num_layers: int) -> nn.ModuleDict:
    """One HSM per residual write: ``1 + 2·num_layers`` of them."""
    return nn.ModuleDict({name: HybridSparsificationModule(dim, rank) for name in site_names(num_layers)})


def install_hsm_hooks(pruner, hsms: nn.ModuleDict) -> Hooks:
    """Forward hooks that replace each residual write ``x`` by ``s ⊙ m̃ ⊙ (x + W2 W1 x)``.

    The hooks sit on the (LoRA-wrapped, if any) embedding, ``o_proj`` and ``down_proj`` modules, so they see the
    merged ``(W + BA)x`` that export folds. The mask is the pruner's current ``hidden`` mask (soft in training,
    binary in eval, none in the dense phase, where the HSMs still apply).
    """
    adapter = pruner.adapter
    p = adapter.prefix
    sites = [("embed", f"{p}embed_tokens", adapter.backbone.embed_tokens)]
    for l, layer in enumerate(adapter.layers):
        sites += [(f"{kind}_{l}", f"{p}layers.{l}.{path}", layer.get_submodule(path)) for kind, path in LAYER_WRITES]
    hooks: Hooks = []
    for name, path, module in sites:

        def write_hook(module, args, output, hsm=hsms[name]):
            y = hsm(output)
            m = pruner.mask("hidden")
            return y if m is None else pruner.multiply(y, m[0])

        hooks.append((path, module, module.register_forward_hook(write_hook)))
    return hooks
