"""Bad input gets a clear error that names the problem and the fix, raised before any work is lost."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, with_lora

import lightning_prune as lp


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.5", 40, True])
def test_target_sparsity_outside_unit_interval(value):
    with pytest.raises(lp.PruningConfigError, match=r"`target_sparsity` must be a number in \[0, 1\)"):
        lp.L0Config(target_sparsity=value)


def test_unsupported_model_lists_families_and_how_to_register():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(lp.UnsupportedModelError) as info:
        lp.attach(model, lp.L0Config())
    message = str(info.value)
    assert "Sequential" in message and "llama" in message
    assert "register_adapter" in message


def test_unknown_structure_name_lists_available(llama):
    with pytest.raises(lp.PruningConfigError) as info:
        lp.attach(llama, lp.L0Config(structures=("heads", "neurons")))
    assert "neurons" in str(info.value) and "ffn" in str(info.value) and "hidden" in str(info.value)


def test_unreachable_target(llama):
    with pytest.raises(lp.PruningConfigError, match="cannot be reached"):
        lp.attach(llama, lp.L0Config(structures=("heads",), target_sparsity=0.9))


def test_keep_units_for_structure_not_gated():
    with pytest.raises(lp.PruningConfigError, match="not in `structures`"):
        lp.L0Config(structures=("heads",), keep_units={"ffn": 8})


def test_keep_units_larger_than_row(llama):
    with pytest.raises(lp.PruningConfigError, match="exceeds"):
        lp.attach(llama, lp.L0Config(structures=("heads",), keep_units={"heads": 5}))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"target": "latency"}, "`target` must be 'params' or 'flops'"),
        ({"warmup_steps": -1}, "`warmup_steps`"),
        ({"gate_lr": 0.0}, "`gate_lr` must be positive"),
        ({"structures": ()}, "`structures` is empty"),
        ({"structures": ("ffn", "ffn")}, "lists a name twice"),
        ({"temperature": -1.0}, "`temperature`"),
    ],
)
def test_invalid_config_values(kwargs, pattern):
    with pytest.raises(lp.PruningConfigError, match=pattern):
        lp.L0Config(**kwargs)


def test_attaching_twice_is_refused(llama):
    pruner = lp.attach(llama, lp.L0Config())
    with pytest.raises(lp.AttachStateError, match="already has gates attached"):
        lp.attach(llama, lp.L0Config())
    pruner.detach()
    lp.attach(llama, lp.L0Config())  # fine after detach


def test_lora_applied_after_attach_is_detected():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn")))
    with_lora(model)
    with pytest.raises(lp.AttachStateError, match=r"replaced after attach\(\).*peft.*get_peft_model"):
        pruner.penalty()


def test_nan_in_gates_stops_with_step(llama):
    pruner = lp.attach(llama, lp.L0Config())
    pruner.pruning_step = 17
    with torch.no_grad():
        pruner.gates["ffn"].log_alpha[0, 3] = float("nan")
    with pytest.raises(lp.NonFiniteError, match="step 17"):
        pruner.penalty()
    with pytest.raises(lp.NonFiniteError):
        pruner.export()


def test_export_dir_not_empty_is_refused_before_export(llama, tmp_path, monkeypatch):
    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.0))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    called = []
    monkeypatch.setattr(pruner, "export", lambda *a, **k: called.append(1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pruner.save_compact(target)
    assert not called, "the check must run before the (expensive) export"
    assert (target / "keep.txt").read_text() == "user data"


def test_export_refuses_a_model_that_does_not_match(llama, monkeypatch):
    """If an adapter produced a wrong compact model, export raises and returns nothing."""
    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.0, structures=("ffn",)))
    randomize_gates(pruner)
    original = pruner.adapter.build_compact

    def corrupt(state, masks):
        compact, info = original(state, masks)
        with torch.no_grad():
            compact.model.layers[1].mlp.down_proj.weight.mul_(1.01)
        return compact, info

    monkeypatch.setattr(pruner.adapter, "build_compact", corrupt)
    with pytest.raises(lp.ExportMismatchError, match="does not compute what the gated model computed"):
        pruner.export()
    assert pruner.last_report is None


def test_penalty_requires_config_object(llama):
    with pytest.raises(lp.PruningConfigError, match="must be a PruningConfig"):
        lp.attach(llama, {"target_sparsity": 0.5})


def test_an_unreachable_target_names_the_structures_left_to_gate():
    """The advice lists what the model has and the config does not gate (it suggested 'ffn' to a config gating
    only 'ffn')."""
    with pytest.raises(lp.PruningConfigError, match=r"removes only 0\.\d+ .*Add structures \('heads', 'hidden'") as err:
        lp.attach(tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.6, structures=("ffn",)))
    assert "'ffn'" not in str(err.value).split("Add structures")[1]
