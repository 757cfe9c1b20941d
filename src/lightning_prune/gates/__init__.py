"""Gate kinds and their registry.

A new gate kind is one file plus one :func:`register_gate` call::

    @register_gate("my_gate")
    class MyGate(Gate): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lightning_prune.gates.base import Gate
from lightning_prune.gates.generator import DecisionGenerator, GeneratorGate
from lightning_prune.gates.hard_concrete import HardConcreteGate
from lightning_prune.gates.scale import ScaleGate
from lightning_prune.gates.ste import STEGate
from lightning_prune.registry import Registry

#: Gate kinds by name. Re-registering a name with another class raises.
GATES: Registry[type[Gate]] = Registry(
    "gate kind", "Register one with @lightning_prune.register_gate('<name>') on a Gate subclass."
)

G = TypeVar("G", bound=type[Gate])


def register_gate(name: str) -> Callable[[G], G]:
    """Class decorator that makes a :class:`Gate` subclass available under ``name``."""

    def wrap(cls: G) -> G:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Gate names must be identifiers, got {name!r}.")
        if not (isinstance(cls, type) and issubclass(cls, Gate)):
            raise TypeError(f"register_gate expects a Gate subclass, got {cls!r}.")
        return GATES.register(name, cls)

    return wrap


def gate_class(name: str) -> type[Gate]:
    """The gate class registered under ``name``; the error lists the known kinds."""
    return GATES.get(name)


def available_gates() -> list[str]:
    return sorted(GATES)


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
    "GATES",
]
