"""Which peft tuners an export can carry, and their merged weights.

The compact model is a plain transformers model: whatever a peft tuner adds to the function must be merged into
the base weights, exactly, or the export would ship a different model from the one trained. Two kinds of tuner
exist:

* **Layer tuners** wrap a base layer (``lora.Linear``, ``ia3.Linear``, ...) and change its weight (and, for some,
  its bias): ``W' = W + ΔW`` (LoRA, rsLoRA, AdaLoRA, LoHa, LoKr, VeRA), ``W' = m · (W + ΔW)/‖W + ΔW‖`` (DoRA),
  ``W' = W · diag(l)`` (IA3), ``W' = R W`` (OFT). Their merge is peft's own ``merge()``, run on a copy of the layer
  (:func:`merged_layer`), so the live model, its adapters and its hooks stay as they are. The tuners in
  :data:`SUPPORTED_TUNERS` are tested (tests/test_check_scope.py); the export's equivalence check guards each
  export.
* **Prompt learning** (prefix tuning, prompt tuning, p-tuning, multitask prompt tuning, CPT) and adaption prompts
  change the ``PeftModel``'s forward (virtual tokens, extra past key values), not any weight: no compact model of
  the original class can carry them, so they are refused at attach (:func:`check_tuners`).

Everything else peft offers is refused at attach as well, naming the tuner and what to do, rather than failing
at export after the training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_prune.errors import UnsupportedModelError

#: peft tuner families (the ``peft.tuners.<name>`` package of the layer class) whose merge the export uses.
SUPPORTED_TUNERS = ("lora", "adalora", "ia3", "loha", "lokr", "vera", "oft")

_REFUSE_HINT = (
    "Prune with LoRA (LoraConfig, incl. use_dora / use_rslora), AdaLoRA, IA3, LoHa, LoKr, VeRA or OFT, or call "
    "merge_and_unload() on the peft model and attach the gates to the merged model."
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft ``PeftModel`` (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def tuner_name(module: nn.Module) -> str | None:
    """The peft tuner family of a tuner layer (``"lora"`` for ``peft.tuners.lora.layer.Linear``), else ``None``."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft not installed: no tuner layers
        return None
    if not isinstance(module, BaseTunerLayer):
        return None
    parts = type(module).__module__.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["peft", "tuners"] else type(module).__name__


def merges_on_export(module: nn.Module) -> bool:
    """Whether the forward of tuner layer ``module`` adds its adapters to the base layer (they are active, enabled
    and not merged into the base weight already), so that the export must merge them."""
    return not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False)


def tuner_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every peft tuner layer of ``model`` by module path (outermost wrapper only)."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if tuner_name(module) is not None and not any(name.startswith(f"{p}.") for p in out):
            out[name] = module
    return out


def plain_key(key: str, tuner_paths: set[str] | dict) -> str | None:
    """The plain model's state-dict key of ``key`` (a key of the model with peft layers injected), or ``None`` for a
    tensor that belongs to a tuner (``lora_A``, ``ia3_l``, ...) or to the original copy of a ``modules_to_save``."""
    if ".original_module." in key:
        return None
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:i])
        if path in tuner_paths:
            if parts[i] != "base_layer":
                return None  # a tuner's own tensor
            break
    if ".lora_" in key or key.startswith("lora_"):  # LoRA tensors outside a tuner layer we know of
        return None
    return key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def _prompt_learning(model: nn.Module) -> tuple[str, object] | None:
    """``(adapter name, config)`` of an active prompt-learning / adaption-prompt peft config, if any."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return None
    active = getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", None)]
    for name in active if isinstance(active, (list, tuple)) else [active]:
        config = configs.get(name)
        peft_type = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "")))
        if getattr(config, "is_prompt_learning", False) or peft_type == "ADAPTION_PROMPT":
            return name, config
    return None


def check_tuners(model: nn.Module) -> None:
    """Refuse, at attach, peft tuners that the export cannot merge into a plain compact model.

    Args:
        model: the model as the user will train it (a ``PeftModel``, a model with tuner layers injected, or a
            plain model).

    Raises:
        UnsupportedModelError: prompt learning (prefix / prompt tuning, p-tuning, ...), adaption prompts, a tuner
            family not in :data:`SUPPORTED_TUNERS`, or ``lora_bias=True`` on a layer that has no bias.
    """
    prompt = _prompt_learning(model)
    if prompt is not None:
        name, config = prompt
        peft_type = getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", None))
        raise UnsupportedModelError(
            f"peft {peft_type} (adapter {name!r}) changes the PeftModel's forward (virtual tokens or extra past key "
            "values in front of every input), not the weights: a compact model cannot carry it, and an export would "
            "silently drop it. Prune with a weight tuner (LoRA, IA3, ...) or none, export, then apply "
            f"{peft_type} to the compact model."
        )
    for path, module in tuner_layers(model).items():
        tuner = tuner_name(module)
        if tuner not in SUPPORTED_TUNERS:
            raise UnsupportedModelError(
                f"peft tuner {tuner!r} (`{path}`: {type(module).__module__}.{type(module).__qualname__}) is not "
                f"supported by the export: its merge into the compact model is not verified. Supported tuners: "
                f"{list(SUPPORTED_TUNERS)}. {_REFUSE_HINT}"
            )
        lora_bias = getattr(module, "lora_bias", None) or {}
        base = module.get_base_layer()
        with_bias = [a for a in getattr(module, "active_adapters", []) if lora_bias.get(a)]
        if with_bias and getattr(base, "bias", None) is None:
            raise UnsupportedModelError(
                f"LoRA adapter {with_bias[0]!r} has lora_bias=True on `{path}`, whose base layer has no bias: the "
                "bias it learns has no place in the compact model (peft cannot merge it either). Use "
                "lora_bias=False, or target only layers with a bias."
            )


@torch.no_grad()
def merged_layer(module: nn.Module) -> nn.Module:
    """The base layer of tuner layer ``module`` with its active adapters merged, as a new module (peft's own
    ``merge()`` on a copy: the live layer and its adapters are unchanged). Memory: one copy of the layer."""
    clone = copy.deepcopy(module)
    clone.merge(safe_merge=False)
    return clone.get_base_layer()
