"""The dependency-graph adapter's cost terms: one term per weight slice a (gated or fixed) channel set controls.

A conv/linear weight is at most four terms (gated or fixed output channels × gated or fixed input channels), each a
subset of the one ``channels`` row, so the term count does not grow with the channel count; FLOPs use the output
positions per example measured once at attach (:func:`output_sizes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lightning_prune.adapters.depgraph.graph import _NORMS, _WEIGHTED, STRUCTURE, _channel_dim, forward_in_eval_mode
from lightning_prune.cost import CostTerm, Dim

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.depgraph.adapter import DependencyGraphAdapter


@torch.no_grad()
def output_sizes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Output positions per example (H×W of a conv, tokens of a linear) for FLOP counts."""
    sizes: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED):

            def hook(mod, args, output, name=name):
                channels = output.shape[_channel_dim(mod)]
                sizes[name] = max(1, output.numel() // max(1, output.shape[0] * channels))

            handles.append(module.register_forward_hook(hook))
    forward_in_eval_mode(model, inputs, handles)
    return sizes


def depgraph_cost_terms(adapter: DependencyGraphAdapter) -> list[CostTerm]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.cost_terms` of ``adapter``'s model."""
    outs, ins = adapter.channel_units("outs"), adapter.channel_units("ins")
    terms: list[CostTerm] = []
    seen: set[int] = set()
    for name, module in adapter.model.named_modules():
        params = [(pn, p) for pn, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in params)
        if not params:
            continue
        out_map, in_map = outs.get(name, {}), ins.get(name, {})
        if isinstance(module, _WEIGHTED) and (out_map or in_map):
            terms += _weighted_terms(adapter, name, module, out_map, in_map)
        elif isinstance(module, _NORMS) and out_map:
            per_channel = sum(1 for _ in params)  # weight and bias: one value per channel each
            channels = module.weight.shape[0] if module.weight is not None else 0
            gated, fixed = _split(out_map, channels)
            terms += _subset_terms(name, gated, fixed, Dim(per_channel), prunable=False)  # norms: not prunable
        else:
            for pn, p in params:
                terms.append(CostTerm(f"{name}.{pn}", Dim(p.numel())))
    return terms


def _weighted_terms(
    adapter: DependencyGraphAdapter, name: str, module: nn.Module, out_map: dict[int, int], in_map: dict[int, int]
) -> list[CostTerm]:
    """A conv/linear weight as at most four terms (gated or fixed output channels × gated or fixed input
    channels, each a subset of the one ``channels`` row), plus its bias: the term count does not grow with the
    channel count (one term per channel pair made attaching ResNet-50 take minutes)."""
    weight = module.weight
    n_out, n_in_per_group = weight.shape[0], weight.shape[1]
    kernel = weight[0, 0].numel()
    flops = 2.0 * adapter._spatial.get(name, 1)
    depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
    if depthwise:  # one filter per channel: the output channel's unit (or the input's, which it follows)
        merged = {o: out_map[o] if o in out_map else in_map[o] for o in range(n_out) if o in out_map or o in in_map}
        outs, fixed_out = _split(merged, n_out)
        terms = _subset_terms(name, outs, fixed_out, Dim(n_in_per_group * kernel), flops)
    else:
        outs, fixed_out = _split(out_map, n_out)
        ins, fixed_in = _split(in_map, n_in_per_group)
        out_dims = ([Dim(len(outs), STRUCTURE, 0, units=outs)] if outs else []) + (
            [Dim(fixed_out)] if fixed_out else []
        )
        in_dims = ([Dim(len(ins) * kernel, STRUCTURE, 0, kernel, units=ins)] if ins else []) + (
            [Dim(fixed_in * kernel)] if fixed_in else []
        )
        terms = [
            CostTerm(f"{name}.weight[{a},{b}]", o, i, prunable=True, flops_per_param=flops)
            for a, o in enumerate(out_dims)
            for b, i in enumerate(in_dims)
        ]
    if module.bias is not None:
        terms += _subset_terms(f"{name}.bias", outs, fixed_out, Dim(1))
    return terms


def _split(channel_map: dict[int, int], channels: int) -> tuple[tuple[int, ...], int]:
    """The units of the gated channels (in channel order) and the number of channels no gate controls."""
    gated = tuple(channel_map[c] for c in range(channels) if c in channel_map)
    return gated, channels - len(gated)


def _subset_terms(
    name: str, gated: tuple[int, ...], fixed: int, inp: Dim, flops: float = 0.0, prunable: bool = True
) -> list[CostTerm]:
    """``(gated channels + fixed channels) × inp`` as one term per non-empty part."""
    terms = []
    if gated:
        out = Dim(len(gated), STRUCTURE, 0, units=gated)
        terms.append(CostTerm(f"{name}[gated]", out, inp, prunable=prunable, flops_per_param=flops))
    if fixed:
        terms.append(CostTerm(f"{name}[fixed]", Dim(fixed), inp, prunable=prunable, flops_per_param=flops))
    return terms
