"""Merged weights without touching the training model.

:class:`MergedWeights` is the state of the underlying Hugging Face model as if peft's ``merge_and_unload()`` had
been called (``W + scale · B A`` for every active LoRA adapter), with peft's names mapped back to the plain model's
names, **one tensor at a time**: a LoRA-wrapped weight is merged when it is read and belongs to the reader, which
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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft ``PeftModel`` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer") and hasattr(module, "get_delta_weight")


def _clean_key(key: str) -> str | None:
    if ".lora_" in key or key.startswith("lora_") or ".original_module." in key:
        return None
    return key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


class MergedWeights(Mapping[str, torch.Tensor]):
    """The plain model's state dict with every active LoRA adapter merged, computed per tensor on access.

    Reading a LoRA-wrapped weight returns a fresh ``W + Σ scale · B A`` (peft's ``get_delta_weight``, added in the
    base weight's dtype: what ``merge_and_unload`` computes); reading any other tensor returns the live tensor
    itself, detached. Nothing is cached, so the caller decides how long a merged tensor lives.

    A method may change a tensor before the adapter slices it (PAT folds its HSMs): ``weights[key] = value`` stores
    a replacement, and :meth:`transform` registers a function applied on every read (nothing held meanwhile).

    Args:
        model: the model (a peft ``PeftModel`` or a plain model with LoRA layers injected, or no LoRA at all).
        skip_prefix: state-dict prefix of the pruner's own state, left out.

    Raises:
        UnsupportedModelError: an adapter kind whose merge cannot be reproduced (DoRA), so that export never folds
            a wrong weight.
    """

    def __init__(self, model: nn.Module, skip_prefix: str = "pruning_gates") -> None:
        hf = unwrap_model(model)
        self._live: dict[str, torch.Tensor] = {}
        for key, value in hf.state_dict(keep_vars=True).items():
            if key.startswith(f"{skip_prefix}.") or f".{skip_prefix}." in key:
                continue
            if "lora_magnitude_vector" in key:
                raise UnsupportedModelError(
                    "DoRA adapters (use_dora=True) cannot be merged by the export yet. Train with plain LoRA, or call "
                    "merge_and_unload() yourself and attach the gates to the merged model."
                )
            clean = _clean_key(key)
            if clean is not None:
                self._live[clean] = value.detach()
        #: clean weight key -> (module path, peft layer) for every LoRA layer not merged yet
        self._lora: dict[str, tuple[str, nn.Module]] = {
            f"{name}.weight": (name, module)
            for name, module in hf.named_modules()
            if _is_lora_layer(module) and not getattr(module, "merged", False)
        }
        self._replaced: dict[str, torch.Tensor] = {}
        self._transforms: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {}
        self._storages = {t.untyped_storage().data_ptr() for t in self._live.values() if not t.is_meta}
        self._storages.discard(0)

    # -- Mapping -----------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._replaced:
            value = self._replaced[key]
        elif key in self._lora:
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
        name, module = self._lora[key]
        base = module.get_base_layer().weight.detach()
        merged = None
        for adapter in getattr(module, "active_adapters", []):
            if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
                continue
            delta = module.get_delta_weight(adapter)
            if delta.shape != base.shape:
                raise UnsupportedModelError(
                    f"Cannot merge LoRA adapter {adapter!r} of `{name}`: delta {tuple(delta.shape)} vs weight "
                    f"{tuple(base.shape)}."
                )
            merged = base + delta.to(base.dtype) if merged is None else merged.add_(delta.to(base.dtype))
            del delta
        return base.clone() if merged is None else merged


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
        UnsupportedModelError: an adapter kind whose merge this function cannot reproduce (DoRA).
    """
    return owned_state(MergedWeights(model, skip_prefix))
