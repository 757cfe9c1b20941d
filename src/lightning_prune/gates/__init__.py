"""Gate kinds and their registry.

A new gate kind is one file plus one :func:`register_gate` call::

    @register_gate("my_gate")
    class MyGate(Gate): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lightning_prune.errors import PruningConfigError
from lightning_prune.gates.base import Gate
from lightning_prune.gates.generator import DecisionGenerator, GeneratorGate
from lightning_prune.gates.hard_concrete import HardConcreteGate
from lightning_prune.gates.scale import ScaleGate
from lightning_prune.gates.ste import STEGate

_GATES: dict[str, type[Gate]] = {}

G = TypeVar("G", bound=type[Gate])


def register_gate(name: str) -> Callable[[G], G]:
    """Class decorator that makes a :class:`Gate` subclass available under ``name``."""

    def wrap(cls: G) -> G:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Gate names must be identifiers, got {name!r}.")
        if name in _GATES and _GATES[name] is not cls:
            raise ValueError(f"A gate kind named {name!r} is already registered ({_GATES[name].__name__}).")
        if not (isinstance(cls, type) and issubclass(cls, Gate)):
            raise TypeError(f"register_gate expects a Gate subclass, got {cls!r}.")
        _GATES[name] = cls
        return cls

    return wrap


def gate_class(name: str) -> type[Gate]:
    """The gate class registered under ``name``; the error lists the known kinds."""
    try:
        return _GATES[name]
    except KeyError:
        raise PruningConfigError(f"Unknown gate kind {name!r}. Known kinds: {sorted(_GATES)}.") from None


def available_gates() -> list[str]:
    return sorted(_GATES)


register_gate("hard_concrete")(HardConcreteGate)
register_gate("generator")(GeneratorGate)
register_gate("scale")(ScaleGate)
register_gate("ste")(STEGate)

__all__ = [
    "Gate",
    "HardConcreteGate",
    "GeneratorGate",
    "ScaleGate",
    "STEGate",
    "DecisionGenerator",
    "register_gate",
    "gate_class",
    "available_gates",
]
