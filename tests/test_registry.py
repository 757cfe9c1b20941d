"""The generic :class:`Registry` and the six registries built on it."""

from __future__ import annotations

import pytest

import lightning_prune as lp
from lightning_prune.adapters.registry import ADAPTERS
from lightning_prune.errors import UnknownAdapterError, UnknownNameError, UnsupportedModelError
from lightning_prune.export.per_layer import FAMILIES
from lightning_prune.gates import GATES
from lightning_prune.gates.generator import BACKBONES
from lightning_prune.methods.atp.layout import LAYOUTS
from lightning_prune.methods.registry import METHODS
from lightning_prune.registry import Registry


def make(**kwargs) -> Registry[object]:
    return Registry("widget", "Register one with register_widget('<name>').", **kwargs)


def test_register_get_names_order_and_membership():
    reg = make()
    a, b, c = object(), object(), object()
    assert reg.register("zeta", a) is a
    reg.register("alpha", b)

    @reg.register("mid")
    def fn():
        return None

    reg.register("last", c)
    assert reg.get("zeta") is a and reg.get("mid") is fn
    assert reg.names() == ["zeta", "alpha", "mid", "last"] == list(reg)  # registration order, not sorted
    assert reg.values() == [a, b, fn, c] and reg.items()[0] == ("zeta", a)
    assert "alpha" in reg and "nope" not in reg and 3 not in reg
    assert len(reg) == 4


def test_unknown_name_names_kind_name_known_names_and_how_to_register():
    reg = make()
    reg.register("b", 1)
    reg.register("a", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("nope")
    message = str(info.value)
    assert message == "Unknown widget 'nope'. Known widgets: ['a', 'b']. Register one with register_widget('<name>')."
    assert isinstance(info.value, lp.PruningConfigError) and isinstance(info.value, LookupError)
    with pytest.raises(UnknownNameError, match=r"Unknown widget \['x'\]"):
        reg.get(["x"])  # an unhashable name is still an unknown name


def test_custom_error_type_and_plural():
    reg = Registry("adapter", "", plural="families", error=UnknownAdapterError)
    with pytest.raises(UnsupportedModelError, match=r"^Unknown adapter 'x'\. Known families: \[\]\.$"):
        reg.get("x")
    with pytest.raises(TypeError, match="subclass of UnknownNameError"):
        Registry("widget", "", error=KeyError)  # type: ignore[arg-type]


def test_duplicate_rule_refuses_by_default_and_replaces_when_asked():
    first, second = object(), object()
    strict = make()
    strict.register("w", first)
    strict.register("w", first)  # the same object again is a no-op
    with pytest.raises(ValueError, match=r"Cannot register widget 'w': the name is already taken"):
        strict.register("w", second)
    assert strict.get("w") is first
    strict.register("w", second, replace=True)  # a per-call override
    assert strict.get("w") is second

    lenient = make(replace=True)
    lenient.register("w", first)
    lenient.register("other", 0)
    lenient.register("w", second)
    assert lenient.get("w") is second and lenient.names() == ["w", "other"]  # keeps its place
    with pytest.raises(ValueError, match="Cannot register"):
        lenient.register("w", first, replace=False)


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name):
    with pytest.raises(ValueError, match="non-empty strings"):
        make().register(name, object())


@pytest.mark.parametrize(
    ("registry", "kind", "error", "known", "replace"),
    [
        (GATES, "gate kind", lp.PruningConfigError, "hard_concrete", False),
        (METHODS, "pruning method", lp.PruningConfigError, "l0", False),
        (ADAPTERS, "adapter", lp.UnsupportedModelError, "llama", False),
        (BACKBONES, "generator backbone", lp.PruningConfigError, "transformer", False),
        (LAYOUTS, "ATP layout", lp.PruningConfigError, "llama", False),
        (FAMILIES, "per-layer family", ValueError, "qwen2", True),
    ],
    ids=["gates", "methods", "adapters", "backbones", "atp_layouts", "per_layer_families"],
)
def test_each_library_registry_is_a_registry_and_refuses_unknown_names(registry, kind, error, known, replace):
    assert isinstance(registry, Registry)
    assert known in registry and registry.replace is replace
    with pytest.raises(error) as info:  # the error type each lookup raised before the registries were unified
        registry.get("no_such_name")
    assert isinstance(info.value, UnknownNameError)
    message = str(info.value)
    assert f"Unknown {kind} 'no_such_name'" in message and repr(known) in message and "egister" in message


def test_public_helpers_keep_their_behaviour():
    from lightning_prune.adapters.registry import resolve_adapter
    from lightning_prune.gates import available_gates, gate_class
    from lightning_prune.methods.registry import available_methods, method_config_class

    assert available_methods() == sorted(METHODS.names()) and method_config_class("l0") is lp.L0Config
    assert available_gates() == sorted(GATES.names()) and gate_class("hard_concrete") is lp.HardConcreteGate
    assert lp.available_adapters() == ADAPTERS.names()  # registration order: later ones are tried first
    with pytest.raises(lp.UnsupportedModelError, match="Unknown adapter 'nope'"):
        resolve_adapter(None, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Cannot register gate kind 'hard_concrete'"):

        @lp.register_gate("hard_concrete")
        class Other(lp.HardConcreteGate):
            pass
