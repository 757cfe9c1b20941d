"""Type checks of a config's fields against their annotations, before any range check reads them.

A string, a bool where a number is expected, NaN or inf, or ``None`` where a value is needed raise a
:class:`~lightning_prune.errors.PruningConfigError` that names the field, the value and the fix. Every
:class:`~lightning_prune.methods.base.PruningConfig` subclass gets them (see its ``__init_subclass__``), so a new
method's fields are checked without code of its own.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any

from lightning_prune.errors import PruningConfigError

#: What each annotation of a config field accepts, in words (for the error message).
_KIND_WORDS = {
    "bool": "True or False",
    "int": "an int",
    "float": "a finite number",
    "str": "a string",
    "tuple[str, ...]": "a tuple of names such as ('heads', 'ffn')",
    "dict[str, int]": "a dict of structure names to ints such as {'ffn': 32}",
}


#: Fields whose type error reads better with their meaning than with the bare type.
_FIELD_WORDS = {
    "target_sparsity": "a number in [0, 1) (the fraction of prunable parameters to remove)",
    "structures": "a tuple of structure names such as ('heads', 'ffn')",
    "distill_weight": "a non-negative number (0 turns it off)",
    "distill_hidden_weight": "a non-negative number (0 turns it off)",
}


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _default_of(config: Any, name: str) -> Any:
    f = config.__dataclass_fields__[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _bad_type(config: Any, name: str, kind: str, optional: bool, value: Any) -> PruningConfigError:
    what = _KIND_WORDS.get(kind, kind) + (" or None" if optional else "")
    default = _default_of(config, name)
    example = f" (the default is {default!r})" if default is not MISSING and default is not None else ""
    if isinstance(value, str) and kind in ("int", "float", "bool"):
        hint = f"pass the value itself, not a string: `{name}=<{kind}>`{example}; in YAML leave it unquoted."
    elif isinstance(value, bool):
        hint = f"True/False is not a number here; pass a number{example}."
    elif isinstance(value, float) and kind in ("int", "float") and not math.isfinite(value):
        hint = f"NaN and inf are not valid settings; pass a finite value{example}."
    elif isinstance(value, float) and kind == "int" and value.is_integer():
        hint = f"write `{name}={int(value)}`."
    else:
        hint = f"pass {what}{example}."
    what = _FIELD_WORDS.get(name, what)
    return PruningConfigError(
        f"`{name}` must be {what}, got {value!r} ({type(value).__name__}) in {type(config).__name__}. HINT: {hint}"
    )


def _checked_value(config: Any, name: str, kind: str, optional: bool, value: Any) -> Any:
    """``value`` as the built-in type ``kind`` names (a numpy scalar becomes a float/int, a list of names a
    tuple), or a :class:`PruningConfigError` naming the field, the value and the fix."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isfinite(float(value)):
            return value if type(value) in (int, float) else float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    if kind == "dict[str, int]" and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        # the counts are checked by the class, whose message says what they count
        return {k: int(v) if _is_count(v) else v for k, v in value.items()}
    if kind not in _KIND_WORDS:  # an annotation this check does not know: the class validates it itself
        return value
    raise _bad_type(config, name, kind, optional, value)


def check_field_types(config: Any) -> None:
    """Check every dataclass field of ``config`` against its annotation (``float``, ``int | None``, ...) before any
    range check reads it: a string, a bool where a number is expected, NaN or inf raise a
    :class:`PruningConfigError` that names the field, the value and the fix. Every config class gets it (see
    :meth:`PruningConfig.__init_subclass__`), so a new method's fields are checked without code of its own."""
    for f in fields(config):
        kinds = [k.strip() for k in str(f.type).split("|")]
        optional = "None" in kinds
        kinds = [k for k in kinds if k != "None"]
        value = getattr(config, f.name)
        if value is None and optional:
            continue
        if len(kinds) != 1 or kinds[0] not in _KIND_WORDS:
            continue
        if value is None:
            raise _bad_type(config, f.name, kinds[0], optional, value)
        checked = _checked_value(config, f.name, kinds[0], optional, value)
        if checked is not value:
            object.__setattr__(config, f.name, checked)


def _types_checked_first(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(post_init)
    def wrapped(self: Any) -> None:
        check_field_types(self)
        post_init(self)

    wrapped._types_checked = True  # type: ignore[attr-defined]
    return wrapped
