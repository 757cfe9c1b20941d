"""Merged weights without touching the training model.

:class:`MergedWeights` is the state of the underlying Hugging Face model as if peft's ``merge_and_unload()`` had
been called (``W + scale · B A`` for every active LoRA adapter; IA3, LoHa, ... alike, see
:mod:`lightning_prune.peft_tuners`), with peft's names mapped back to the plain model's
names, **one tensor at a time**: a tuner-wrapped weight is merged when it is read and belongs to the reader, which
slices it and lets it go, so an export never holds a second full copy of the model. Every other tensor is the live
one (no copy); :meth:`MergedWeights.owned` copies what a compact model would otherwise share with the live model.
The live model, its adapters and its hooks stay as they are, so training can go on after an export.

``merged_state_dict`` is the eager form (every tensor copied): small models and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from lightning_prune.errors import UnsupportedModelError
from lightning_prune.peft_tuners import merged_layer, merges_on_export, plain_key, tuner_layers, unwrap_model

__all__ = ["MergedWeights", "merged_state_dict", "owned_state", "unwrap_model"]


class MergedWeights(Mapping[str, torch.Tensor]):
    """The plain model's state dict with every active peft adapter merged, computed per tensor on access.

    Reading the weight (or bias) of a tuner-wrapped layer returns a fresh merged tensor (peft's own ``merge()`` on a
    copy of the layer: what ``merge_and_unload`` computes, in the base weight's dtype); reading any other tensor
    returns the live tensor itself, detached. Nothing large is cached, so the caller decides how long a merged tensor
    lives (a merged bias is kept until read, since the weight's merge computes it too).

    A method may change a tensor before the adapter slices it (PAT folds its HSMs): ``weights[key] = value`` stores
    a replacement, and :meth:`transform` registers a function applied on every read (nothing held meanwhile).

    Args:
        model: the model (a peft ``PeftModel`` or a plain model with tuner layers injected, or no tuner at all).
        skip_prefix: state-dict prefix of the pruner's own state, left out.
    """

    def __init__(self, model: nn.Module, skip_prefix: str = "pruning_gates") -> None:
        hf = unwrap_model(model)
        layers = tuner_layers(hf)
        self._live: dict[str, torch.Tensor] = {}
        for key, value in hf.state_dict(keep_vars=True).items():
            if key.startswith(f"{skip_prefix}.") or f".{skip_prefix}." in key:
                continue
            clean = plain_key(key, layers)
            if clean is not None:
                self._live[clean] = value.detach()
        #: clean weight / bias key -> (module path, peft layer) for every tuner layer whose adapters the forward adds
        self._tuned: dict[str, tuple[str, nn.Module]] = {}
        for name, module in layers.items():
            if merges_on_export(module):
                for tensor in ("weight", "bias"):
                    if f"{name}.{tensor}" in self._live:
                        self._tuned[f"{name}.{tensor}"] = (name, module)
        self._merged_bias: dict[str, torch.Tensor] = {}
        self._replaced: dict[str, torch.Tensor] = {}
        self._transforms: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        self._storages = {t.untyped_storage().data_ptr() for t in self._live.values() if not t.is_meta}
        self._storages.discard(0)

    # -- Mapping -----------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._replaced:
            value = self._replaced[key]
        elif key in self._tuned:
            value = self._merge(key)
        else:
            value = self._live[key]
        for fn in self._transforms.get(key, ()):
            value = fn(value)
        return value

    def __iter__(self) -> Iterator[str]:
        yield from self._live
        yield from (k for k in self._replaced if k not in self._live)

    def __len__(self) -> int:
        return len(self._live) + sum(k not in self._live for k in self._replaced)

    def __contains__(self, key: object) -> bool:
        return key in self._live or key in self._replaced

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._replaced[key] = value
        self._transforms.pop(key, None)

    # -- the rest ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the weights live (the device of the first tensor)."""
        return next(iter(self._live.values())).device

    def transform(self, key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn`` to ``key``'s tensor on every later read (after any earlier transform)."""
        if key not in self:
            raise KeyError(key)
        self._transforms.setdefault(key, []).append(fn)

    def owned(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, or a copy of it if it shares memory with the live model (a compact model must not)."""
        return tensor.clone() if tensor.untyped_storage().data_ptr() in self._storages else tensor

    @torch.no_grad()
    def _merge(self, key: str) -> torch.Tensor:
        name, module = self._tuned[key]
        if key in self._merged_bias:
            return self._merged_bias.pop(key)
        try:
            merged = merged_layer(module)
        except Exception as error:  # noqa: BLE001 - peft's own merge failed: say which layer, never fold a guess
            raise UnsupportedModelError(
                f"Cannot merge the peft adapters of `{name}` ({type(module).__qualname__}) into the compact model: "
                f"{type(error).__name__}: {error}"
            ) from error
        weight, bias = merged.weight.detach(), getattr(merged, "bias", None)
        if key.endswith(".bias"):
            return bias.detach()
        if bias is not None and f"{name}.bias" in self._tuned:
            self._merged_bias[f"{name}.bias"] = bias.detach()
        return weight


def owned_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` in a dict, none of them shared with the live model (for in-place edits)."""
    if isinstance(state, MergedWeights):
        return {key: state.owned(value) for key, value in state.items()}
    return dict(state)


@torch.no_grad()
def merged_state_dict(model: nn.Module, skip_prefix: str = "pruning_gates") -> dict[str, torch.Tensor]:
    """State dict of the plain model with all active LoRA adapters merged into their base weights (every tensor
    a copy). Exports read :class:`MergedWeights` instead, which holds at most one merged tensor at a time.

    Raises:
        UnsupportedModelError: peft could not merge an adapter.
    """
    return owned_state(MergedWeights(model, skip_prefix))
