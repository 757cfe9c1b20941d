"""The dependency-graph adapter's export: fold the channel masks into the weights of a copy of the model, then
remove the pruned channels with torch-pruning's group pruning (which records the history ``load_pruned`` replays).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.adapters.depgraph.graph import STRUCTURE, prune_by_groups
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.export.history import with_versions

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.adapters.depgraph.adapter import DependencyGraphAdapter


def build_depgraph_compact(
    adapter: DependencyGraphAdapter, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any]]:
    """:meth:`~lightning_prune.adapters.ModelAdapter.build_compact` of ``adapter``'s model."""
    from lightning_prune.export.merge import owned_state

    compact = copy.deepcopy(adapter.template)
    # the meta tensors are replaced by the state's, copies where they are the live model's (folded in place below)
    compact.load_state_dict(with_versions(owned_state(state), compact), strict=True, assign=True)
    mask = masks.get(STRUCTURE)
    if mask is None:
        mask = torch.ones(1, adapter.units)
    mask = mask.detach().float().cpu()
    modules = dict(compact.named_modules())
    with torch.no_grad():
        for name, index in adapter.mask_points().items():
            values = torch.cat([mask[0], torch.ones(1)])[torch.where(index < 0, adapter.units, index)]
            _fold(modules[name], values)
    pruned = {
        g["root"]: [r for r in range(g["width"]) if mask[0, off + r] == 0]
        for g, off in zip(adapter.groups, adapter.offsets)
    }
    prune_by_groups(compact, adapter.inputs, pruned)
    kept = {g["root"]: g["width"] - len(pruned[g["root"]]) for g in adapter.groups}
    return compact, {"layer_shapes": [kept], "uniform": False}


def _fold(module: nn.Module, values: torch.Tensor) -> None:
    """Scale a module's per-channel output by ``values``: its affine params (norms) or weight rows and bias."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.weight is None:
            raise UnsupportedModelError(
                f"{type(module).__name__} without affine parameters cannot carry a channel mask; use affine=True."
            )
        module.weight.mul_(values.to(module.weight.dtype))
        module.bias.mul_(values.to(module.bias.dtype))
        return
    shape = [-1] + [1] * (module.weight.dim() - 1)
    module.weight.mul_(values.to(module.weight.dtype).view(shape))
    if module.bias is not None:
        module.bias.mul_(values.to(module.bias.dtype))


def _weightless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s structure whose parameters and persistent buffers are on the ``meta`` device (no
    memory): the export fills it with ``load_state_dict(..., assign=True)``. Non-persistent buffers, which no state
    dict carries, are copied for real (they are small: anchors, index tables)."""
    persistent = {id(t) for t in model.state_dict(keep_vars=True).values()}
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) in persistent:
            memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)
