"""Where the dependency-graph adapter's masks act: once per group output, on the modules that produce it.

A producer whose output only feeds a norm of the same group leaves the mask to that norm, so every producer of a
residual-coupled group carries the same mask. Outputs the model modifies in place afterwards are found at attach
(:func:`overwritten_outputs`): their masks save the input, not the result (:mod:`lightning_prune.ops`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource
from lightning_prune.adapters.depgraph.graph import _NORMS, _WEIGHTED, STRUCTURE, _channel_dim, forward_in_eval_mode

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.depgraph.adapter import DependencyGraphAdapter


@torch.no_grad()
def overwritten_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: set[str]) -> set[str]:
    """The modules of ``names`` whose output the model modifies in place afterwards (``nn.ReLU(inplace=True)``
    after a BatchNorm, ``out += identity``): a mask there must not save its result for backward (see
    :mod:`lightning_prune.ops`). Read from the outputs' version counters over an eval and a training forward
    (in-place dropout acts in training only); norms run in eval mode, and every buffer, module mode and the RNG
    are restored, so the model is left as it was."""
    modules = dict(model.named_modules())
    seen: list[tuple[str, torch.Tensor, int]] = []

    def hook(module, args, output, name):
        if torch.is_tensor(output):
            seen.append((name, output, output._version))

    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in sorted(names)]
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.clone()) for b in model.buffers()]
    cuda = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    try:
        for training in (False, True):
            model.train(training)
            for module in model.modules():
                if isinstance(module, _NORMS):
                    module.eval()  # no running-statistics update, and batch-size-1 inputs still run
            with torch.random.fork_rng(devices=cuda):
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for module, mode in modes.items():
            module.training = mode
        for b, saved in buffers:
            b.copy_(saved)
    return {name for name, output, version in seen if output._version != version}


def mask_points(adapter: DependencyGraphAdapter) -> dict[str, torch.Tensor]:
    """Module name → global unit index per output channel (``-1``: not gated) for every masked output."""
    outs = adapter.channel_units("outs")
    modules = dict(adapter.model.named_modules())
    graph_outputs = _norm_fed(adapter.model, adapter.inputs)
    points = {}
    for name, mapping in outs.items():
        module = modules[name]
        if name in graph_outputs and graph_outputs[name] <= set(outs):
            continue  # its norm (same group) carries the mask
        channels = module.weight.shape[0] if not isinstance(module, nn.Linear) else module.out_features
        index = torch.full((channels,), -1, dtype=torch.long)
        for local, unit in mapping.items():
            index[local] = unit
        points[name] = index
    return points


def _norm_fed(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, set[str]]:
    """Weighted layers whose output goes only into norm layers: name → names of those norms."""
    result: dict[str, set[str]] = {}
    users: dict[str, set[str]] = {}
    handles, order = [], []
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED + _NORMS):
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: order.append((name, a, o))))
    with torch.no_grad():
        forward_in_eval_mode(model, inputs, handles)
    produced = {id(o): n for n, _, o in order}
    for name, args, _ in order:
        for a in args:
            if torch.is_tensor(a) and id(a) in produced:
                users.setdefault(produced[id(a)], set()).add(name)
    modules = dict(model.named_modules())
    for name, used_by in users.items():
        if isinstance(modules[name], _WEIGHTED) and all(isinstance(modules[u], _NORMS) for u in used_by):
            # only when no other consumer reads the raw output (e.g. a second branch)
            consumers = sum(
                1
                for n, a, _ in order
                for t in a
                if torch.is_tensor(t) and id(t) in produced and produced[id(t)] == name
            )
            if consumers == len(used_by):
                result[name] = used_by
    return result


def install_depgraph_hooks(
    adapter: DependencyGraphAdapter, source: MaskSource, structures: set[str]
) -> list[tuple[str, nn.Module, RemovableHandle]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.install_hooks` of ``adapter``'s model."""
    if STRUCTURE not in structures:
        return []
    hooks = []
    modules = dict(adapter.model.named_modules())
    for name, index in adapter.mask_points().items():
        module = modules[name]
        dim = _channel_dim(module)
        gather = torch.where(index < 0, torch.full_like(index, adapter.units), index)

        def hook(mod, args, output, gather=gather, dim=dim, overwritten=name in adapter.overwritten):
            m = source.mask(STRUCTURE)
            if m is None:
                return None
            values = torch.cat([m[0], m.new_ones(1)])[gather.to(m.device)]
            shape = [1] * output.dim()
            shape[dim] = -1
            return source.multiply(output, values.view(shape), overwritten=overwritten)

        hooks.append((name, module, module.register_forward_hook(hook)))
    return hooks
