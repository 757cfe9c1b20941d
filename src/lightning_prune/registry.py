"""One generic registry: names mapped to the things the library can be extended with.

Gate kinds, methods, model adapters, ATP generator backbones, ATP LoRA layouts and per-layer export families are
each a :class:`Registry` instance with the same rules: names in registration order, one error type
(:class:`~lightning_prune.errors.UnknownNameError`) for an unknown name, whose message names the kind, the name
asked for, the registered names and how to register one, and one per-instance rule for a name registered twice.
The public helpers (``register_gate``, ``register_method``, ``register_adapter``, ...) validate what they are given
and then register it here.

Example::

    backbones = Registry("generator backbone", "Register one with @register_generator_backbone('<name>').")

    @backbones.register("mlp")
    class MLPBackbone(GeneratorBackbone): ...

    backbones.get("mlp")  # MLPBackbone
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from lightning_prune.errors import UnknownNameError

T = TypeVar("T")
_MISSING: object = object()


class Registry(Generic[T]):
    """Names mapped to objects of one kind, in registration order.

    Args:
        kind: what is registered, in words (``"gate kind"``, ``"pruning method"``); used in every message.
        hint: how a user registers one (a sentence), appended to the unknown-name message.
        plural: the plural used in messages (``"Known kinds: ..."``); defaults to the last word of ``kind`` + ``s``.
        replace: the rule for a name registered again with a different object: ``False`` raises ``ValueError``,
            ``True`` replaces the old one (keeping its place in the order). Registering the same object again is
            always a no-op.
        error: the exception raised for an unknown name; a subclass of :class:`UnknownNameError`, so that callers
            that caught the registry's former error type keep working.
    """

    def __init__(
        self,
        kind: str,
        hint: str,
        *,
        plural: str | None = None,
        replace: bool = False,
        error: type[UnknownNameError] = UnknownNameError,
    ) -> None:
        if not (isinstance(kind, str) and kind):
            raise ValueError(f"`kind` must be a non-empty string, got {kind!r}.")
        if not (isinstance(error, type) and issubclass(error, UnknownNameError)):
            raise TypeError(f"`error` must be a subclass of UnknownNameError, got {error!r}.")
        self.kind = kind
        self.hint = hint
        self.plural = plural if plural is not None else kind.split()[-1] + "s"
        self.replace = replace
        self.error = error
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, *, replace: bool | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool | None = None) -> T: ...

    def register(self, name: str, obj: object = _MISSING, *, replace: bool | None = None) -> object:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        Args:
            name: a non-empty string.
            obj: the object to register.
            replace: this call's rule for a name already taken by another object (see the class docstring);
                ``None`` uses the registry's rule.

        Raises:
            ValueError: ``name`` is empty or not a string, or it is taken and replacing is off.
        """
        if not (isinstance(name, str) and name):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}.")
        if obj is _MISSING:

            def wrap(target: T) -> T:
                return self.register(name, target, replace=replace)

            return wrap
        old = self._entries.get(name, _MISSING)
        may_replace = self.replace if replace is None else replace
        if old is not _MISSING and old is not obj and not may_replace:
            raise ValueError(
                f"Cannot register {self.kind} {name!r}: the name is already taken by {_describe(old)}. "
                "Pick another name."
            )
        self._entries[name] = obj  # type: ignore[assignment]
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            UnknownNameError: (or the registry's ``error``) no such name; the message lists the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise self.error(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """The message :meth:`get` raises for ``name``."""
        known = sorted(self._entries)
        return f"Unknown {self.kind} {name!r}. Known {self.plural}: {known}. {self.hint}".rstrip()

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, in registration order."""
        return list(self._entries.items())

    def values(self) -> list[T]:
        """The registered objects, in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _describe(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)
