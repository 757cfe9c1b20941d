"""The adapter registry: :func:`register_adapter`, :func:`resolve_adapter`, :func:`available_adapters`.

Each family package (``adapters/llama/``, ``adapters/bert/``, ...) registers its adapter when it is imported; the
order of registration is the order ``lightning_prune.adapters`` imports them, and later registrations are tried first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import nn

from lightning_prune.adapters.base import ModelAdapter
from lightning_prune.errors import UnknownAdapterError, UnsupportedModelError
from lightning_prune.export.per_layer import NominalConfig, register_per_layer_families
from lightning_prune.registry import Registry

A = TypeVar("A", bound=type[ModelAdapter])

REGISTER_HINT = (
    "To support it, subclass lightning_prune.adapters.ModelAdapter (see lightning_prune/adapters/llama/ "
    "for a complete example, docs/adapters.md for a walk-through) and decorate it with "
    "@lightning_prune.register_adapter('<name>'). For a plain CNN/MLP, pass example inputs to trace its channels "
    "with torch-pruning: attach(model, config, example_inputs=torch.randn(1, 3, 32, 32)), or "
    "PruningCallback(config, example_inputs=...) in Lightning."
)

#: Adapter classes by name, in registration order (later ones are tried first by :func:`resolve_adapter`).
#: Re-registering a name with another class raises.
ADAPTERS: Registry[type[ModelAdapter]] = Registry(
    "adapter",
    "Register one with @lightning_prune.register_adapter('<name>') on a ModelAdapter subclass (docs/adapters.md).",
    error=UnknownAdapterError,
)


def register_adapter(name: str) -> Callable[[A], A]:
    """Class decorator that registers a :class:`ModelAdapter` under ``name``. Later registrations are
    tried first, so a user adapter can take over a family the library already knows."""

    def wrap(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
            raise TypeError(f"register_adapter expects a ModelAdapter subclass, got {cls!r}.")
        ADAPTERS.register(name, cls)
        cls.name = name
        return cls

    return wrap


def register_family(
    name: str,
    adapter: type[ModelAdapter],
    families: dict[str, str],
    package_file: str,
    kinds: tuple[str, ...],
    nominal_config: NominalConfig,
) -> None:
    """Register a transformers family's package: the per-layer export classes of every model type in ``families``
    (rendered from the ``modeling_per_layer.py`` beside ``package_file``; see
    :func:`~lightning_prune.export.per_layer.register_per_layer_families`), then its adapter as ``name``.

    ``name`` is also the model type whose transformers module the template is written as (class-name prefix
    ``families[name]``, module ``transformers.models.<name>``): rendering for another model type of ``families``
    replaces those two names.
    """
    template = str(Path(package_file).with_name("modeling_per_layer.py"))
    template_names = (families[name], name)
    register_per_layer_families(families, template, kinds, nominal_config, template_names=template_names)
    register_adapter(name)(adapter)


def available_adapters() -> list[str]:
    return ADAPTERS.names()


def resolve_adapter(model: nn.Module, name: str | None = None) -> type[ModelAdapter]:
    """The adapter class for ``model`` (or the one registered as ``name``)."""
    if name is not None:
        return ADAPTERS.get(name)
    for cls in reversed(ADAPTERS.values()):
        if cls.matches(model):
            return cls
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    raise UnsupportedModelError(
        f"No registered adapter handles {type(model).__name__} (model_type={model_type!r}). "
        f"Registered adapters: {ADAPTERS.names()} ({_supported_families()}). {REGISTER_HINT}"
    )


def _supported_families() -> str:
    families = []
    for cls in ADAPTERS.values():
        families.extend(getattr(cls, "model_types", ()))
    return "model types: " + ", ".join(families) if families else "no families"
