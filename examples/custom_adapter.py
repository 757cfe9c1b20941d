"""Worked example: teach lightning-prune a model family it does not know (see docs/adapters.md).

``ResidualMLP`` is a small residual MLP "transformer without attention": an embedding, ``n_layers`` blocks
``x + down(gelu(up(norm(x))))`` and a head. The adapter below gates one structure, ``ffn`` (the hidden
channels of every block, one row per block), so each block can keep a different width.

Run it::

    python examples/custom_adapter.py
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import lightning_prune as lp
from lightning_prune.adapters import MaskSource, ModelAdapter, register_adapter
from lightning_prune.cost import CostTerm, Dim
from lightning_prune.structures import StructureSpec


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, dim)
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class ResidualMLP(nn.Module):
    """Token embedding → residual MLP blocks (widths may differ per block) → linear head."""

    def __init__(self, vocab: int = 32, dim: int = 16, widths: tuple[int, ...] = (32, 32)) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, w) for w in widths)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@register_adapter("residual_mlp")
class ResidualMLPAdapter(ModelAdapter):
    """One structure, ``ffn``: unit ``j`` of row ``l`` is hidden channel ``j`` of block ``l`` (row ``j`` of
    ``up`` and its bias, column ``j`` of ``down``)."""

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, ResidualMLP)

    def structures(self) -> dict[str, StructureSpec]:
        widths = set(self.model.widths)
        if len(widths) != 1:  # a structure's rows share one unit count
            raise lp.UnsupportedModelError(f"ResidualMLPAdapter needs equal block widths, got {self.model.widths}.")
        return {"ffn": StructureSpec("ffn", rows=len(self.model.blocks), units=widths.pop())}

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        dim, vocab = self.model.embed.embedding_dim, self.model.embed.num_embeddings
        terms = [CostTerm("embed", Dim(vocab), Dim(dim)), CostTerm("head", Dim(vocab), Dim(dim), bias=True)]
        for layer, block in enumerate(self.model.blocks):
            ffn = Dim(block.up.out_features, "ffn", layer)  # shrinks with the kept units of row `layer`
            terms += [
                CostTerm(f"blocks.{layer}.norm", Dim(dim), Dim(2)),  # LayerNorm weight and bias
                CostTerm(f"blocks.{layer}.up", ffn, Dim(dim), bias=True, prunable=True, flops_per_param=2),
                CostTerm(f"blocks.{layer}.down", Dim(dim), ffn, bias=True, prunable=True, flops_per_param=2),
            ]
        return terms

    def root_module(self) -> nn.Module:
        return self.model  # masks are refreshed once per forward pass of the whole model

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        hooks = []
        for layer, block in enumerate(self.model.blocks):

            def mask_ffn(module, args, layer=layer):
                mask = source.mask("ffn")  # (rows, units) or None in the dense phase
                return None if mask is None else (source.multiply(args[0], mask[layer]),)

            hooks.append((f"blocks.{layer}.down", block.down, block.down.register_forward_pre_hook(mask_ffn)))
        return hooks

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        mask = masks["ffn"]
        keep = [m.nonzero().flatten() for m in mask]
        compact = ResidualMLP(self.model.embed.num_embeddings, self.model.embed.embedding_dim, [len(k) for k in keep])
        new = dict(state)  # merged weights (LoRA folded) under the plain model's names
        for layer, idx in enumerate(keep):
            scale = mask[layer, idx].to(state[f"blocks.{layer}.down.weight"].dtype)  # fold γ-scaled masks too
            prefix = f"blocks.{layer}"
            new[f"{prefix}.up.weight"] = state[f"{prefix}.up.weight"][idx]
            new[f"{prefix}.up.bias"] = state[f"{prefix}.up.bias"][idx]
            new[f"{prefix}.down.weight"] = state[f"{prefix}.down.weight"][:, idx] * scale
        compact.load_state_dict(new)
        return compact, {"layer_shapes": [{"ffn": len(k)} for k in keep], "uniform": False}

    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        vocab = self.model.embed.num_embeddings
        return {"input_ids": torch.randint(0, vocab, (batch_size, seq_len), generator=generator)}

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs)  # the model returns logits directly


def main(steps: int = 60, seed: int = 0) -> tuple[nn.Module, lp.Pruner]:
    """Prune ``ResidualMLP`` to 50% of its FFN parameters while fitting a toy copy task; return the export."""
    torch.manual_seed(seed)
    model = ResidualMLP()
    pruner = lp.attach(model, lp.L0Config(structures=("ffn",), target_sparsity=0.5, warmup_steps=steps // 2))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-2))
    pruner.hook_optimizer(optimizer)  # pruner.step() after every optimizer.step()
    for _ in range(steps):
        ids = torch.randint(0, 32, (8, 6))
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    compact = pruner.export()  # raises ExportMismatchError if the adapter got anything wrong
    print(pruner.last_report.summary())
    return compact, pruner


if __name__ == "__main__":
    main()
