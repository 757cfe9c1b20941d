"""An export whose masks removed a structure from every layer warns, naming it and what the model lost (issue #18,
session 7: L0 gates at 90% of MiniLM's encoder closed every attention head and the exported classifier answered one
class for every input). The export itself stays exact."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_causal_lm

import lightning_prune as lp
from lightning_prune.pruner.stats import emptied_structures_warning


def _exported(caplog, keep_units: dict[str, int]) -> str:
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), keep_units=keep_units))
    pruner.set_phase("frozen")
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        compact = pruner.export()
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compact(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    return caplog.text


def test_every_head_pruned_warns_with_the_consequence_and_the_fixes(caplog):
    text = _exported(caplog, {"heads": 0})
    assert "every unit of ['heads'] was pruned in every layer" in text
    assert "tokens no longer exchange information" in text
    assert "keep_units" in text and "GradualConfig" in text


def test_a_kept_head_does_not_warn(caplog):
    assert "pruned in every layer" not in _exported(caplog, {"heads": 1})


@pytest.mark.parametrize(
    "masks, expected",
    [
        ({"heads": torch.zeros(2, 4), "ffn": torch.ones(2, 8)}, ["heads"]),
        ({"heads": torch.tensor([[0.0, 0.0], [0.0, 0.7]]), "ffn": torch.zeros(2, 8)}, ["ffn"]),  # a scale counts
        ({"heads": torch.ones(2, 4), "ffn": torch.ones(2, 8)}, []),
    ],
)
def test_the_structures_named_are_those_with_no_unit_left(masks, expected):
    message = emptied_structures_warning(masks)
    assert (message is None) == (not expected)
    if expected:
        assert f"every unit of {expected}" in message


def test_the_freeze_warns_before_the_fine_tuning_runs(caplog):
    """The masks that freeze are the export's: saying it then leaves the user the choice to stop."""
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), keep_units={"heads": 0}))
    pruner.pruning_step = 12
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        pruner.set_phase("frozen")
    assert "every unit of ['heads'] was pruned in every layer" in caplog.text
    assert "masks frozen at pruning step 12" in caplog.text
    caplog.clear()
    kept = lp.attach(tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.3, keep_units={"heads": 1}))
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        kept.set_phase("frozen")
    assert "pruned in every layer" not in caplog.text


@pytest.mark.parametrize("structure", ["heads", "ffn", "hidden", "attn_block", "mlp_block"])
def test_the_warning_says_what_the_model_lost_and_how_to_keep_that_structure(structure):
    """Each built-in structure gets its consequence, and the ``keep_units`` example names the emptied structure (it
    suggested ``{'heads': 2}`` for an emptied MLP block)."""

    text = emptied_structures_warning({structure: torch.zeros(2, 3), "other": torch.ones(2, 3)})
    assert f"every unit of ['{structure}']" in text and f"({structure}: " in text
    assert f"keep_units` (e.g. {{'{structure}': 1}})" in text


def test_an_export_far_from_its_target_warns_with_the_fixes(caplog):
    """STE exports what its gates decided: untrained gates keep everything, so a 60% target exports the dense size.
    The user is told (it used to pass with an info line); an L0 export, cut at the target, is not warned about."""
    from lightning_prune.pruner.stats import TARGET_MISS_TOLERANCE, missed_target_warning

    ste = lp.attach(tiny_causal_lm("llama"), lp.STEConfig(target_sparsity=0.6, structures=("heads", "ffn")))
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        ste.export()
    assert ste.last_report.exact_sparsity < 0.6 - TARGET_MISS_TOLERANCE
    assert (
        "export's sparsity is 0.000 for a target of 0.600 (ste)" in caplog.text and "freeze_after_steps" in caplog.text
    )
    caplog.clear()
    l0 = lp.attach(tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.6, structures=("heads", "ffn")))
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        l0.export()
    assert "export's sparsity" not in caplog.text
    assert missed_target_warning(0.62, 0.6, "l0") is None and "smaller than asked" in missed_target_warning(
        0.9, 0.6, "x"
    )
    assert "decision='target'" in missed_target_warning(0.1, 0.6, "polarization")
    assert "set `match_target=True`" in missed_target_warning(0.1, 0.6, "l0", current=0.6, match_target=False)
    assert "`keep_units`" in missed_target_warning(0.1, 0.6, "l0", current=0.6, match_target=True)
    assert "`count_weight`" in missed_target_warning(0.1, 0.6, "pat", match_target=False)  # PAT refuses match_target


def test_an_export_during_the_target_warm_up_says_so(caplog):
    """An L0 export cuts at the schedule's current target: a run that ends during the warm-up misses the final target
    because of the warm-up, and the warning says that, not that L0 would fix it."""
    pruner = lp.attach(
        tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.6, structures=("heads", "ffn"), warmup_steps=100)
    )
    pruner.pruning_step = 20  # the schedule asks 0.12 of 0.6
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        pruner.export()
    assert "training ended during the target's warm-up (the schedule asked 0.120 at the end)" in caplog.text
    assert "L0Config / GradualConfig" not in caplog.text
