"""Per-layer (non-uniform) exports: a config subclass with ``layer_shapes`` and a small modeling file.

The modeling file is rendered from a template for the model's family and written into the export directory, so
the export loads with ``AutoModelFor*.from_pretrained(path, trust_remote_code=True)`` without lightning-prune
installed. Inside lightning-prune the same rendered source is imported from memory (:func:`per_layer_module`), so
:func:`~lightning_prune.load_compact` never executes code from the export directory.

A built-in family's template is a real module in its folder (``adapters/llama/modeling_per_layer.py``,
``adapters/bert/...``, ``adapters/gpt2/...``), written for one model type of the family (``LlamaConfig``,
``transformers.models.llama``): linted and imported by the tests. It imports torch, transformers and what the
templates share from :mod:`lightning_prune.export.per_layer_shared` (one ``from ... import`` line, which rendering
replaces by the definitions it names: :mod:`~lightning_prune.export.per_layer_inline`; any other import of the
package is refused), so the rendered file is self-contained. Rendering also replaces the template's names
(:attr:`PerLayerFamily.template_names`) with another model type's (``Qwen2Config``, ``transformers.models.qwen2``).
A template may also use the placeholders ``__FAMILY__`` and ``__MODULE__`` (the default ``template_names``), as
third-party ``.py.txt`` templates do.

Each transformers ``model_type`` that can be exported per layer has a :class:`PerLayerFamily` in a small
registry (:func:`register_per_layer_family`): its template, the class-name prefix substituted into it,
the model kinds the template defines and how to turn the original config into the per-layer class's
nominal config (transformers 5 configs validate in ``__init__``, so the nominal sizes must pass the
parent class's checks; the per-layer shapes then override them).
"""

from __future__ import annotations

import functools
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lightning_prune.export.per_layer_inline import inline_shared_helpers
from lightning_prune.registry import Registry

MODELING_FILENAME = "modeling_lightning_prune.py"
MODEL_TYPE_PREFIX = "lightning_prune_"

#: model kind (class-name suffix) -> the Auto class that loads it
AUTO_CLASSES: dict[str, str] = {
    "ForCausalLM": "AutoModelForCausalLM",
    "LMHeadModel": "AutoModelForCausalLM",  # GPT2LMHeadModel
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "Model": "AutoModel",
}

NominalConfig = Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class PerLayerFamily:
    """How one transformers ``model_type`` is exported with per-layer shapes.

    Attributes:
        class_prefix: the family's class-name prefix (``"Llama"`` for ``LlamaConfig``), substituted for the
            template's class-name prefix (``template_names[0]``); the model_type replaces ``template_names[1]``.
        template: path of the modeling template (absolute; a relative path is taken from the ``lightning_prune``
            package directory).
        kinds: class-name suffixes the template defines (``"ForSequenceClassification"``, ``"Model"``, ...).
        nominal_config: maps ``(original config dict, layer_shapes)`` to the kwargs of the per-layer config
            (nominal sizes that pass the parent config's and modules' checks).
        template_names: the class-name prefix and the transformers module name the template is written with:
            ``("Llama", "llama")`` for a template that is a real module of the Llama family, or the placeholders
            ``("__FAMILY__", "__MODULE__")``.
    """

    class_prefix: str
    template: str
    kinds: tuple[str, ...]
    nominal_config: NominalConfig
    template_names: tuple[str, str] = ("__FAMILY__", "__MODULE__")


#: Per-layer export families by model_type. Re-registering a model_type replaces its family (tests and third-party
#: packages swap a template in and back).
FAMILIES: Registry[PerLayerFamily] = Registry(
    "per-layer family",
    plural="model types",
    hint="Register one with lightning_prune.export.per_layer.register_per_layer_family(model_type, "
    "PerLayerFamily(...)).",
    replace=True,
)


def register_per_layer_family(model_type: str, family: PerLayerFamily) -> None:
    """Make ``model_type`` exportable with per-layer shapes (a new family is one template + one call, made by the
    family's adapter package when it is imported). ``family.template`` is a path (see :class:`PerLayerFamily`).
    """
    if not _template_path(family.template).exists():
        raise FileNotFoundError(
            f"Per-layer template {str(_template_path(family.template))!r} for {model_type!r} is missing."
        )
    unknown = [k for k in family.kinds if k not in AUTO_CLASSES]
    if unknown:
        raise ValueError(f"Unknown model kinds {unknown} for {model_type!r}; known kinds: {list(AUTO_CLASSES)}.")
    FAMILIES.register(model_type, family)


def register_per_layer_families(
    families: dict[str, str],
    template: str,
    kinds: tuple[str, ...],
    nominal_config: NominalConfig,
    template_names: tuple[str, str] = ("__FAMILY__", "__MODULE__"),
) -> None:
    """:func:`register_per_layer_family` for every ``{model_type: class_prefix}`` of one family's adapter (they share
    the template, the kinds and the nominal config)."""
    for model_type, class_prefix in families.items():
        spec = PerLayerFamily(class_prefix, template, kinds, nominal_config, template_names)
        register_per_layer_family(model_type, spec)


def _template_path(template: str) -> Path:
    path = Path(template)
    return path if path.is_absolute() else Path(__file__).parent.parent / template


def per_layer_family(model_type: str) -> PerLayerFamily:
    """The registered :class:`PerLayerFamily` of ``model_type``."""
    return FAMILIES.get(model_type)


def without_export_keys(config: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(config)
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "layer_shapes"):
        cfg.pop(key, None)
    return cfg


def render_modeling_source(family: str) -> str:
    """The modeling file's source for ``family`` (a transformers model_type such as ``"llama"``)."""
    spec = per_layer_family(family)
    template = _template_path(spec.template).read_text()
    prefix, module = spec.template_names
    names = {prefix: spec.class_prefix, module: family}
    # one pass: a replacement is never replaced again ("Bert" -> "Roberta" contains "bert")
    pattern = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))

    def substitute(text: str) -> str:
        return re.sub(pattern, lambda match: names[match.group(0)], text)

    return inline_shared_helpers(template, substitute, str(_template_path(spec.template)))


@functools.cache
def per_layer_module(family: str) -> types.ModuleType:
    """The rendered modeling module for ``family``, imported from memory (cached)."""
    name = f"lightning_prune._generated.modeling_{family}"
    module = types.ModuleType(name)
    module.__file__ = f"<lightning_prune {MODELING_FILENAME} for {family}>"
    exec(compile(render_modeling_source(family), module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def class_names(family: str) -> dict[str, str]:
    spec = per_layer_family(family)
    prefix = f"Pruned{spec.class_prefix}"
    return {"config": f"{prefix}Config", **{kind: f"{prefix}{kind}" for kind in spec.kinds}}


def auto_map(family: str) -> dict[str, str]:
    names = class_names(family)
    stem = MODELING_FILENAME[:-3]
    out = {"AutoConfig": f"{stem}.{names['config']}"}
    for kind in per_layer_family(family).kinds:
        out[AUTO_CLASSES[kind]] = f"{stem}.{names[kind]}"
    return out


def _kind(family: str, class_name: str) -> str:
    kinds = per_layer_family(family).kinds
    for kind in sorted(kinds, key=len, reverse=True):  # "...ForSequenceClassification" before "...Model"
        if class_name.endswith(kind):
            return kind
    supported = ", ".join(f"*{k}" for k in kinds)
    raise ValueError(f"Per-layer export of {family!r} supports {supported}, not {class_name}.")


def build_per_layer_model(
    family: str, base_class_name: str, config: dict[str, Any], layer_shapes: list[dict[str, Any]]
) -> nn.Module:
    """A per-layer model of the same kind as ``base_class_name`` with ``config`` and ``layer_shapes``."""
    spec = per_layer_family(family)
    kind = _kind(family, base_class_name)
    module = per_layer_module(family)
    names = class_names(family)
    kwargs = spec.nominal_config(config, layer_shapes)
    pruned_config = getattr(module, names["config"])(layer_shapes=layer_shapes, **kwargs)
    pruned_config.architectures = [names[kind]]
    pruned_config.auto_map = auto_map(family)
    return getattr(module, names[kind])(pruned_config)
