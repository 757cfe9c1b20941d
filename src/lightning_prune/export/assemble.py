"""Putting the compact model together without a full-size copy of anything.

The adapters build the compact model's class with :func:`parameters_on_meta` (its parameters take no memory and
skip their random initialisation; buffers such as rotary frequencies are computed for real, they are small) and
then :func:`assign_weights` hands it the sliced tensors themselves (``load_state_dict(..., assign=True)``: no
copy). With :class:`~lightning_prune.export.merge.MergedWeights` feeding the slices one tensor at a time, an
export holds the gated model, the compact model and one merged full-size tensor at most.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from lightning_prune.export.merge import MergedWeights


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules created inside get their parameters on the ``meta`` device and their buffers on the CPU.

    ``torch.device("meta")`` would also put the non-persistent buffers (rotary ``inv_freq``), which no state dict
    carries, on the meta device. Here every registered parameter is moved to ``meta`` as it is registered (so its
    initialisation runs on nothing); ``torch.empty`` before that reserves address space but touches no memory.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        with torch.device("cpu"):  # buffers on the CPU whatever default device is in force
            yield
    finally:
        nn.Module.register_parameter = register


def assign_weights(
    compact: nn.Module,
    new: dict[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: nn.Module,
    tied: str | None = None,
) -> nn.Module:
    """Give ``compact`` (built with :func:`parameters_on_meta`) the tensors ``new`` as its parameters, in place.

    Each parameter keeps the dtype of its tensor (the caller's: a bf16 model exports a bf16 model). A tensor that
    shares memory with the live model (a weight no structure resized) is copied first. Floating buffers take the
    dtype of the live model's buffer of the same name (else that of the first parameter), as a ``model.to(dtype)``
    of the gated model did to them.

    Args:
        compact: the compact model, parameters on ``meta``.
        new: compact tensors by plain-model key (consumed: the dict is emptied).
        state: the merged weights they were sliced from.
        source: the gated model (its buffers' dtypes).
        tied: key of a parameter that ``compact.tie_weights()`` fills (the LM head tied to the embedding).

    Raises:
        RuntimeError: a key missing or unexpected, or a parameter left on ``meta`` (a bug in the adapter).
    """
    owned = state.owned if isinstance(state, MergedWeights) else (lambda t: t)
    weights = {key: owned(new.pop(key)) for key in list(new)}
    missing, unexpected = compact.load_state_dict(weights, strict=False, assign=True)
    del weights
    missing = [k for k in missing if k != tied]
    if tied is not None:
        compact.tie_weights()
    planning = any(p.is_meta for p in source.parameters())  # a meta model plans its export: meta in, meta out
    left = [] if planning else [name for name, p in compact.named_parameters() if p.is_meta]
    if missing or unexpected or left:
        raise RuntimeError(
            f"Internal error building the compact model: missing keys {missing[:5]}, unexpected {unexpected[:5]}, "
            f"parameters without a value {left[:5]}. Please report this with your model config."
        )
    live = dict(source.named_buffers())
    first = next((p.dtype for p in compact.parameters() if p.is_floating_point()), None)
    for prefix, module in compact.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is None or not buffer.is_floating_point():
                continue
            path = f"{prefix}.{name}" if prefix else name
            dtype = live[path].dtype if path in live else first
            if dtype is not None and buffer.dtype != dtype:
                module._buffers[name] = buffer.to(dtype)
    return compact
