"""``multiple_of``: per-row kept counts rounded to hardware-friendly multiples in the deterministic masks (the
export), with exact export equivalence and counts, and clear errors for bad values."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.ops import set_kept_count


def test_set_kept_count_moves_the_fewest_units_by_score():
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    score = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0, 0.0])
    assert set_kept_count(mask, score, 2).tolist() == [1, 0, 0, 1, 0, 0]  # drops the worst kept (score 1)
    assert set_kept_count(mask, score, 5).tolist() == [1, 1, 1, 1, 1, 0]  # restores the best pruned (4, then 2)
    assert set_kept_count(mask, score, 3).tolist() == mask.tolist()


@pytest.mark.parametrize("uniform", [False, True], ids=["per-layer", "uniform"])
def test_every_row_keeps_a_multiple_and_the_export_is_exact(uniform):
    model = tiny_causal_lm("llama")  # 96 FFN channels per layer
    config = lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), multiple_of={"ffn": 16}, uniform=uniform)
    pruner = lp.attach(model, config)
    randomize_gates(pruner, seed=2)
    unrounded = lp.attach(
        tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn"), uniform=uniform)
    )
    unrounded.config.match_target = False  # as randomize_gates set for `pruner`: the learned counts decide
    unrounded.state.load_state_dict(pruner.state.state_dict())
    before = unrounded.deterministic_masks()["ffn"].sum(-1)
    after = pruner.deterministic_masks()["ffn"].sum(-1)
    assert all(int(k) % 16 == 0 and int(k) > 0 for k in after), after
    assert ((after - before).abs() <= 8).all(), (before, after)  # the nearest multiple
    assert (before % 16 != 0).any(), "the test should exercise rounding"
    compact = pruner.export()  # checked: equals the gated eval model, counts match the cost model
    widths = [layer.mlp.down_proj.in_features for layer in compact.model.layers]
    assert widths == [int(k) for k in after]


def test_bad_multiple_of_is_refused_with_the_fix():
    with pytest.raises(PruningConfigError, match=r"`multiple_of` names 'hidden', which is not in `structures`"):
        lp.L0Config(target_sparsity=0.3, structures=("ffn",), multiple_of={"hidden": 8})
    with pytest.raises(PruningConfigError, match=r"`multiple_of\['ffn'\]` must be a positive int"):
        lp.L0Config(target_sparsity=0.3, structures=("ffn",), multiple_of={"ffn": 0})
    with pytest.raises(PruningConfigError, match="not supported by STEConfig"):
        lp.STEConfig(target_sparsity=0.3, structures=("ffn",), multiple_of={"ffn": 8})
