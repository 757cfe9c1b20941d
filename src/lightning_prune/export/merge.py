"""Merged weights without touching the training model.

``merged_state_dict`` returns the state of the underlying Hugging Face model as if peft's
``merge_and_unload()`` had been called (``W + scale · B A`` for every active LoRA adapter), with peft's
names mapped back to the plain model's names. The live model, its adapters and its hooks stay as they
are, so training can go on after an export.
"""

from __future__ import annotations

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


@torch.no_grad()
def merged_state_dict(model: nn.Module, skip_prefix: str = "pruning_gates") -> dict[str, torch.Tensor]:
    """State dict of the plain model with all active LoRA adapters merged into their base weights.

    Raises:
        UnsupportedModelError: an adapter kind whose merge this function cannot reproduce (DoRA, or a
            peft tuner other than LoRA), so that export never folds a wrong weight.
    """
    hf = unwrap_model(model)
    state: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict(keep_vars=False).items():
        if key.startswith(f"{skip_prefix}.") or f".{skip_prefix}." in key:
            continue
        if "lora_magnitude_vector" in key:
            raise UnsupportedModelError(
                "DoRA adapters (use_dora=True) cannot be merged by the export yet. Train with plain LoRA, or call "
                "merge_and_unload() yourself and attach the gates to the merged model."
            )
        clean = _clean_key(key)
        if clean is not None:
            state[clean] = value.detach().clone()
    for name, module in hf.named_modules():
        if not _is_lora_layer(module):
            continue
        if getattr(module, "merged", False):
            continue  # already merged into the base weight
        base_weight = module.get_base_layer().weight
        merged = base_weight.detach().clone()
        for adapter in getattr(module, "active_adapters", []):
            if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
                continue
            delta = module.get_delta_weight(adapter)
            if delta.shape != merged.shape:
                raise UnsupportedModelError(
                    f"Cannot merge LoRA adapter {adapter!r} of `{name}`: delta {tuple(delta.shape)} vs weight "
                    f"{tuple(merged.shape)}."
                )
            merged += delta.to(merged.dtype)
        state[f"{name}.weight"] = merged
    return state
