"""Generic adapter for arbitrary ``nn.Module`` s (CNNs, MLPs) through torch-pruning's dependency graph.

Channel coupling (residual adds, depthwise convs, BatchNorms, the next layer's input channels) is found by
``torch_pruning.DependencyGraph`` (Fang et al., *DepGraph: Towards Any Structural Pruning*, CVPR 2023): every
*group* is a set of channels that must be removed together. This adapter gates one unit per channel of every
prunable group and removes pruned channels at export with torch-pruning's own group pruning, whose recorded
*pruning history* lets :func:`~lightning_prune.export.history.load_pruned` rebuild the compact model from the
user's model factory.

Layout: groups have different widths (16, 32, 64 channels ...) but a structure's rows must all have the same
number of units, so the single structure ``channels`` has **one row holding every gated channel** (group after
group, ``per_layer=False``: channels are ranked globally, as in network slimming). Cost terms use per-channel
scalar gates (one term per weight slice a channel pair controls), so the exact parameter count of the compact
model is what the cost model says: no padding units exist.

Masks act once per group output: on every module of the group that produces the group's channels (convs,
linears, batch norms), except a producer whose output only feeds a norm of the same group (the norm's output is
masked instead), so every producer of a residual-coupled group carries the *same* mask. Where the model modifies a
masked output in place (``nn.ReLU(inplace=True)`` after a BatchNorm, ``out += identity``; found at attach from the
tensors' version counters) the mask op saves its input instead of its result (:mod:`lightning_prune.ops`).

Kept dense (never gated): the model's output channels (no layer reads them), and groups that touch a grouped
(not depthwise) conv, a LayerNorm over the channels (removing one changes the others' normalisation) or any
parametrised layer other than Conv/Linear/BatchNorm; their parameters are fixed cost terms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource, ModelAdapter
from lightning_prune.adapters.depgraph.cost_terms import depgraph_cost_terms, output_sizes
from lightning_prune.adapters.depgraph.graph import STRUCTURE, build_graph, channel_groups
from lightning_prune.adapters.depgraph.hooks import install_depgraph_hooks, mask_points, overwritten_outputs
from lightning_prune.adapters.depgraph.surgery import _weightless_copy, build_depgraph_compact
from lightning_prune.contracts import example_input_tuple
from lightning_prune.cost import CostTerm
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.structures import StructureSpec


class DependencyGraphAdapter(ModelAdapter):
    """Channel pruning of any traceable ``nn.Module`` (not a Hugging Face transformer).

    Args:
        model: a plain PyTorch model (CNN with residual adds, depthwise convs, an MLP ...).
        example_inputs: a tensor (or tuple of tensors) the model accepts positionally; used to trace the
            dependency graph and, with the batch dimension resized, for the export's equivalence check.

    Raises:
        PruningConfigError: no ``example_inputs`` (pass ``attach(model, config, example_inputs=...)``).
        UnsupportedModelError: torch-pruning finds no prunable channel group.
    """

    accepts_example_inputs = True

    def __init__(self, model: nn.Module, example_inputs: Any = None) -> None:
        super().__init__(model)
        if example_inputs is None:
            raise PruningConfigError(
                f"The dependency_graph adapter traces {type(model).__name__} to find coupled channels and needs "
                "example inputs: call lightning_prune.attach(model, config, example_inputs=torch.randn(1, 3, 32, 32))"
                " (shapes the model accepts)."
            )
        self.inputs = tuple(t.detach() for t in example_input_tuple(example_inputs))
        self.template = _weightless_copy(model)  # the compact model is built from it at export
        try:
            graph = build_graph(model, self.inputs)
        except (ArithmeticError, IndexError, KeyError, ValueError, AssertionError, NotImplementedError) as error:
            # torch-pruning's tracer failing inside its index mapping (e.g. a ShuffleNet channel shuffle): the
            # model's own forward ran (checked before), so the problem is the trace, not the user's inputs
            raise UnsupportedModelError(
                f"torch-pruning could not trace the channel dependencies of {type(model).__name__} "
                f"({type(error).__name__}: {error}); operations that permute or regroup channels through reshapes "
                "(channel shuffles, pixel shuffles) are the usual cause. Gate the model with an adapter of your own "
                "(docs/adapters.md), or prune only a part of it that traces (attach to that submodule)."
            ) from error
        self.groups = channel_groups(model, graph)
        if not self.groups:
            raise UnsupportedModelError(
                f"torch-pruning found no prunable channel group in {type(model).__name__} (supported layers: "
                "Conv*d, Linear, BatchNorm). Register your own adapter for this model (docs/adapters.md)."
            )
        self.offsets = []
        total = 0
        for g in self.groups:
            self.offsets.append(total)
            total += g["width"]
        self.units = total
        self._spatial = output_sizes(self.model, self.inputs)
        #: Mask points whose output the model modifies in place (their masks save the input, not the result).
        self.overwritten = overwritten_outputs(self.model, self.inputs, set(self.mask_points()))

    # -- ModelAdapter ---------------------------------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Never by itself: the adapter is chosen when ``attach`` gets ``example_inputs`` and no family adapter
        matches (or by ``adapter="dependency_graph"``), so an unknown model without inputs still gets the
        "no registered adapter" error that lists the known ones."""
        return False

    def structures(self) -> dict[str, StructureSpec]:
        return {STRUCTURE: StructureSpec(STRUCTURE, rows=1, units=self.units, per_layer=False)}

    def root_module(self) -> nn.Module:
        return self.model

    def channel_units(self, table: str) -> dict[str, dict[int, int]]:
        """Per module: local channel → global unit index, for output (``outs``) or input (``ins``) channels."""
        result: dict[str, dict[int, int]] = {}
        for g, offset in zip(self.groups, self.offsets):
            for name, mapping in g[table].items():
                result.setdefault(name, {}).update({local: offset + root for local, root in mapping.items()})
        return result

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        return depgraph_cost_terms(self)

    def mask_points(self) -> dict[str, torch.Tensor]:
        """Module name → global unit index per output channel (``-1``: not gated) for every masked output."""
        return mask_points(self)

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        return install_depgraph_hooks(self, source, structures)

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        return build_depgraph_compact(self, state, masks)

    def example_inputs(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = {}
        for i, t in enumerate(self.inputs):
            shape = (batch_size, *t.shape[1:])
            if t.is_floating_point():
                out[f"input_{i}"] = torch.randn(shape, generator=generator, dtype=t.dtype)
            else:
                high = int(t.max()) + 1 if t.numel() else 2
                out[f"input_{i}"] = torch.randint(0, max(high, 2), shape, generator=generator, dtype=t.dtype)
        return out

    def outputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(*inputs.values())
        return out if torch.is_tensor(out) else out[0]
