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

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters.base import MaskSource, ModelAdapter
from lightning_prune.cost import CostTerm, Dim
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.structures import StructureSpec

#: Attribute of a compact traced model holding its pruning history (read by ``lightning_prune.export.history``).
HISTORY_ATTRIBUTE = "lightning_prune_history"

STRUCTURE = "channels"
_NORMS = (nn.modules.batchnorm._BatchNorm,)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _channel_dim(module: nn.Module) -> int:
    """The output dim that holds channels: 1 for convs and batch norms, -1 for linears."""
    return -1 if isinstance(module, nn.Linear) else 1


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if torch.is_tensor(example_inputs):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and example_inputs and all(torch.is_tensor(t) for t in example_inputs):
        return tuple(example_inputs)
    raise PruningConfigError(
        "`example_inputs` must be a tensor or a tuple of tensors the model accepts positionally, e.g. "
        f"torch.randn(1, 3, 32, 32); got {type(example_inputs).__name__}."
    )


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
        self.inputs = tuple(t.detach() for t in _as_tuple(example_inputs))
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
        self._spatial = self._output_sizes()
        #: Mask points whose output the model modifies in place (their masks save the input, not the result).
        self.overwritten = self._overwritten_outputs(set(self.mask_points()))

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

    def _units(self, table: str) -> dict[str, dict[int, int]]:
        """Per module: local channel → global unit index, for output (``outs``) or input (``ins``) channels."""
        result: dict[str, dict[int, int]] = {}
        for g, offset in zip(self.groups, self.offsets):
            for name, mapping in g[table].items():
                result.setdefault(name, {}).update({local: offset + root for local, root in mapping.items()})
        return result

    @torch.no_grad()
    def _output_sizes(self) -> dict[str, int]:
        """Output positions per example (H×W of a conv, tokens of a linear) for FLOP counts."""
        sizes: dict[str, int] = {}
        handles = []
        for name, module in self.model.named_modules():
            if isinstance(module, _WEIGHTED):

                def hook(mod, args, output, name=name):
                    channels = output.shape[_channel_dim(mod)]
                    sizes[name] = max(1, output.numel() // max(1, output.shape[0] * channels))

                handles.append(module.register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(*self.inputs)
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        return sizes

    @torch.no_grad()
    def _overwritten_outputs(self, names: set[str]) -> set[str]:
        """The modules of ``names`` whose output the model modifies in place afterwards (``nn.ReLU(inplace=True)``
        after a BatchNorm, ``out += identity``): a mask there must not save its result for backward (see
        :mod:`lightning_prune.ops`). Read from the outputs' version counters over an eval and a training forward
        (in-place dropout acts in training only); norms run in eval mode, and every buffer, module mode and the RNG
        are restored, so the model is left as it was."""
        modules = dict(self.model.named_modules())
        seen: list[tuple[str, torch.Tensor, int]] = []

        def hook(module, args, output, name):
            if torch.is_tensor(output):
                seen.append((name, output, output._version))

        handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in sorted(names)]
        modes = {m: m.training for m in self.model.modules()}
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        cuda = sorted({t.device.index or 0 for t in self.inputs if t.device.type == "cuda"})
        try:
            for training in (False, True):
                self.model.train(training)
                for module in self.model.modules():
                    if isinstance(module, _NORMS):
                        module.eval()  # no running-statistics update, and batch-size-1 inputs still run
                with torch.random.fork_rng(devices=cuda):
                    self.model(*self.inputs)
        finally:
            for h in handles:
                h.remove()
            for module, mode in modes.items():
                module.training = mode
            for b, saved in buffers:
                b.copy_(saved)
        return {name for name, output, version in seen if output._version != version}

    def cost_terms(self, flops_seq_len: int) -> list[CostTerm]:
        outs, ins = self._units("outs"), self._units("ins")
        terms: list[CostTerm] = []
        seen: set[int] = set()
        for name, module in self.model.named_modules():
            params = [(pn, p) for pn, p in module.named_parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for _, p in params)
            if not params:
                continue
            out_map, in_map = outs.get(name, {}), ins.get(name, {})
            if isinstance(module, _WEIGHTED) and (out_map or in_map):
                terms += self._weighted_terms(name, module, out_map, in_map)
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
        self, name: str, module: nn.Module, out_map: dict[int, int], in_map: dict[int, int]
    ) -> list[CostTerm]:
        """A conv/linear weight as at most four terms (gated or fixed output channels × gated or fixed input
        channels, each a subset of the one ``channels`` row), plus its bias: the term count does not grow with the
        channel count (one term per channel pair made attaching ResNet-50 take minutes)."""
        weight = module.weight
        n_out, n_in_per_group = weight.shape[0], weight.shape[1]
        kernel = weight[0, 0].numel()
        flops = 2.0 * self._spatial.get(name, 1)
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

    def mask_points(self) -> dict[str, torch.Tensor]:
        """Module name → global unit index per output channel (``-1``: not gated) for every masked output."""
        outs = self._units("outs")
        modules = dict(self.model.named_modules())
        graph_outputs = self._norm_fed()
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

    def _norm_fed(self) -> dict[str, set[str]]:
        """Weighted layers whose output goes only into norm layers: name → names of those norms."""
        result: dict[str, set[str]] = {}
        users: dict[str, set[str]] = {}
        handles, order = [], []
        for name, module in self.model.named_modules():
            if isinstance(module, _WEIGHTED + _NORMS):
                handles.append(module.register_forward_hook(lambda m, a, o, name=name: order.append((name, a, o))))
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            try:
                self.model(*self.inputs)
            finally:
                self.model.train(was_training)
                for h in handles:
                    h.remove()
        produced = {id(o): n for n, _, o in order}
        for name, args, _ in order:
            for a in args:
                if torch.is_tensor(a) and id(a) in produced:
                    users.setdefault(produced[id(a)], set()).add(name)
        modules = dict(self.model.named_modules())
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

    def install_hooks(self, source: MaskSource, structures: set[str]) -> list[tuple[str, nn.Module, RemovableHandle]]:
        if STRUCTURE not in structures:
            return []
        hooks = []
        modules = dict(self.model.named_modules())
        for name, index in self.mask_points().items():
            module = modules[name]
            dim = _channel_dim(module)
            gather = torch.where(index < 0, torch.full_like(index, self.units), index)

            def hook(mod, args, output, gather=gather, dim=dim, overwritten=name in self.overwritten):
                m = source.mask(STRUCTURE)
                if m is None:
                    return None
                values = torch.cat([m[0], m.new_ones(1)])[gather.to(m.device)]
                shape = [1] * output.dim()
                shape[dim] = -1
                return source.multiply(output, values.view(shape), overwritten=overwritten)

            hooks.append((name, module, module.register_forward_hook(hook)))
        return hooks

    def build_compact(
        self, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        from lightning_prune.export.merge import owned_state

        compact = copy.deepcopy(self.template)
        # the meta tensors are replaced by the state's, copies where they are the live model's (folded in place below)
        compact.load_state_dict(with_versions(owned_state(state), compact), strict=True, assign=True)
        mask = masks.get(STRUCTURE)
        if mask is None:
            mask = torch.ones(1, self.units)
        mask = mask.detach().float().cpu()
        modules = dict(compact.named_modules())
        with torch.no_grad():
            for name, index in self.mask_points().items():
                values = torch.cat([mask[0], torch.ones(1)])[torch.where(index < 0, self.units, index)]
                _fold(modules[name], values)
        pruned = {
            g["root"]: [r for r in range(g["width"]) if mask[0, off + r] == 0]
            for g, off in zip(self.groups, self.offsets)
        }
        prune_by_groups(compact, self.inputs, pruned)
        kept = {g["root"]: g["width"] - len(pruned[g["root"]]) for g in self.groups}
        return compact, {"layer_shapes": [kept], "uniform": False}

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


def with_versions(state: dict[str, torch.Tensor], model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``state`` carrying ``model``'s per-module state-dict versions (``_metadata``), which modules that check their
    version on load (torchvision's MNASNet) need; a dict rebuilt from tensors (safetensors, merging) has none."""
    out = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return out


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
