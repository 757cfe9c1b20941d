"""GradualConfig (issue #18): the training mask meets the current target exactly at every step, the scores learn
through the straight-through estimator (planted structure recovered), the export is the training mask, and the
Lightning callback runs it through dense → prune → frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm
from lightning_helpers import lit_llama, loader, trainer
from test_planted_structure import _precision_recall, fit_to_teacher, planted_models

import lightning_prune as lp
from lightning_prune import PruningConfigError


def test_training_mask_meets_the_warmup_target_at_every_step_and_export_is_that_mask():
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", seed=0).train()
    pruner = lp.attach(model, lp.GradualConfig(target_sparsity=0.5, structures=("heads", "ffn"), warmup_steps=5))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    pruner.hook_optimizer(optimizer)
    ids = loader().dataset.tensors[0][:4]
    for step in range(8):
        loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
        training = {name: pruner.mask(name).detach().clone() for name in pruner.gates}
        assert set(torch.cat([m.flatten() for m in training.values()]).tolist()) <= {0.0, 1.0}  # binary
        exact = float(pruner.cost.sparsity(training))
        target = pruner.current_target()
        assert target <= exact <= target + 0.05, (step, target, exact)  # the tiny model's coarse units
        loss.backward()
        assert all(g.scores.grad is not None and g.scores.grad.abs().sum() > 0 for g in pruner.gates.values())
        optimizer.step()
        optimizer.zero_grad()
    pruner.set_phase("frozen")
    model.eval()
    with torch.no_grad():
        gated = model(input_ids=ids).logits
        compact = pruner.export()
        diff = (compact(input_ids=ids).logits - gated).abs().max()
    assert float(diff) <= 1e-5 * float(gated.abs().max())
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())


def test_scores_recover_planted_heads_and_channels_without_importance_init():
    """Every score starts equal (no dense phase): only the straight-through Taylor signal tells the planted noise
    units from the useful ones."""
    teacher, student, truth = planted_models()
    config = lp.GradualConfig(structures=("heads", "ffn"), target_sparsity=0.5, warmup_steps=100, gate_lr=0.05)
    pruner = lp.attach(student, config)
    pruner.state.regularizer.target_sparsity = float(pruner.cost.sparsity(truth))
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    pruner.hook_optimizer(optimizer)
    fit_to_teacher(student, teacher, pruner, optimizer, 200)
    masks = pruner.deterministic_masks()
    for name in ("heads", "ffn"):
        precision, recall = _precision_recall(masks[name], truth[name])
        assert precision >= 0.9 and recall >= 0.9, (name, precision, recall)


def test_lightning_callback_runs_gradual_pruning_to_an_exact_export(tmp_path):
    config = lp.GradualConfig(target_sparsity=0.4, structures=("heads", "ffn"), warmup_steps=4)
    callback = lp.PruningCallback(
        config, dense_steps=2, freeze_after_steps=7, plot=False, log_stats=False, export_dir=tmp_path / "out"
    )
    trainer(10, [callback]).fit(lit_llama(), loader())
    report = callback.pruner.stats()
    assert 0.4 <= report["exact_sparsity"] <= 0.43
    assert (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(match_target=False), "match_target"),
        (dict(init_score=2.0), "init_score.*score_clamp"),
        (dict(init_score=-1.0), "init_score"),
    ],
)
def test_bad_fields_are_refused(fields, match):
    with pytest.raises(PruningConfigError, match=match):
        lp.GradualConfig(**fields)
