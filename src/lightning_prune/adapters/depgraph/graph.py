"""Tracing a plain model with torch-pruning: its prunable channel groups, and removing channels group by group.

Coupled channels come from ``torch_pruning.DependencyGraph`` (Fang et al., *DepGraph: Towards Any Structural
Pruning*, CVPR 2023): every *group* is a set of channels that must be removed together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.export.history import HISTORY_ATTRIBUTE

STRUCTURE = "channels"
_NORMS = (nn.modules.batchnorm._BatchNorm,)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _channel_dim(module: nn.Module) -> int:
    """The output dim that holds channels: 1 for convs and batch norms, -1 for linears."""
    return -1 if isinstance(module, nn.Linear) else 1


def forward_in_eval_mode(model: nn.Module, inputs: tuple[torch.Tensor, ...], handles: list = ()) -> None:
    """One forward of ``model`` on ``inputs`` in eval mode (its mode restored after), then the forward hooks of
    ``handles``, registered to observe that pass, removed: how the adapter measures the traced model."""
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def build_graph(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]):
    """Trace ``model`` with torch-pruning and return its ``DependencyGraph``."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    finally:
        model.train(was_training)


def _supported_group(group) -> bool:
    """Whether every layer of ``group`` is one whose parameters this adapter can count and mask exactly."""
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
            continue  # functional ops (add, cat, flatten) carry no parameters
        if not isinstance(module, _WEIGHTED + _NORMS):
            return False
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
            return False  # grouped (not depthwise) convs: kept dense
        if isinstance(module, nn.LayerNorm):
            return False  # it normalises over the channels: removing one changes the others' statistics
    return True


def channel_groups(model: nn.Module, graph) -> list[dict[str, Any]]:
    """The prunable channel groups: root module name, width, and per module the local→root channel maps."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in graph.get_all_groups(root_module_types=_WEIGHTED):
        if not _supported_group(group):
            continue
        outs: dict[str, dict[int, int]] = {}
        ins: dict[str, dict[int, int]] = {}
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                table = outs
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                table = ins
            else:
                continue
            mapping = table.setdefault(names[module], {})
            for local, root in zip(item.idxs, item.root_idxs):
                mapping[int(local)] = int(root)
        root = group[0].dep.target.module
        width = graph.get_out_channels(root)
        if not width or not outs or not ins:
            continue  # no layer reads these channels: they are the model's output (e.g. logits), never pruned
        out.append({"root": names[root], "width": int(width), "outs": outs, "ins": ins})
    return out


def prune_by_groups(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], pruned: dict[str, list[int]]) -> None:
    """Remove channels in place: for each group root module name, its output channels ``pruned`` (torch-pruning
    removes the coupled channels of every layer of the group). The history is stored on ``model``."""
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    for root, idxs in pruned.items():
        if not idxs:
            continue
        module = modules[root]
        group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, list(idxs))
        group.prune()
    history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()]
    # the record `save_pruned` writes and `load_pruned` replays (lightning_prune.export.history)
    setattr(
        model,
        HISTORY_ATTRIBUTE,
        {
            "history": history,
            "inputs": [list(t.shape) for t in example_inputs],
            "dtypes": [str(t.dtype) for t in example_inputs],
        },
    )
