"""The method registry: a config class becomes the method ``name`` with :func:`register_method` (used by the CLI,
YAML configs and :meth:`PruningConfig.from_dict <lightning_prune.methods.base.PruningConfig.from_dict>`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.methods.base import PruningConfig

_METHODS: dict[str, type[PruningConfig]] = {}

C = TypeVar("C", bound=type["PruningConfig"])


def register_method(name: str) -> Callable[[C], C]:
    """Class decorator that registers a config class as the method ``name`` (used by the CLI and YAML)."""

    def wrap(cls: C) -> C:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"A method named {name!r} is already registered ({_METHODS[name].__name__}).")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return wrap


def method_config_class(name: str) -> type[PruningConfig]:
    try:
        return _METHODS[name]
    except KeyError:
        raise PruningConfigError(f"Unknown pruning method {name!r}. Known methods: {sorted(_METHODS)}.") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)
