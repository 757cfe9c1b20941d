"""The method registry: a config class becomes the method ``name`` with :func:`register_method` (used by the CLI,
YAML configs and :meth:`PruningConfig.from_dict <lightning_prune.methods.base.PruningConfig.from_dict>`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from lightning_prune.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.methods.base import PruningConfig

#: Method config classes by name. Re-registering a name with another class raises.
METHODS: Registry[type[PruningConfig]] = Registry(
    "pruning method", "Register one with @lightning_prune.register_method('<name>') on a PruningConfig subclass."
)

C = TypeVar("C", bound=type["PruningConfig"])


def register_method(name: str) -> Callable[[C], C]:
    """Class decorator that registers a config class as the method ``name`` (used by the CLI and YAML)."""

    def wrap(cls: C) -> C:
        METHODS.register(name, cls)
        cls.method_name = name
        return cls

    return wrap


def method_config_class(name: str) -> type[PruningConfig]:
    """The config class registered as the method ``name``; the error lists the known methods."""
    return METHODS.get(name)


def available_methods() -> list[str]:
    return sorted(METHODS)
