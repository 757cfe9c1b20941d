"""GradualConfig (issue #18): the training mask meets the current target exactly at every step, the scores learn
through the straight-through estimator (planted structure recovered), the export is the training mask, and the
Lightning callback runs it through dense → prune → frozen."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm
from lightning_helpers import lit_llama, loader, trainer
from test_planted_structure import _plant, _precision_recall

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
        training = {name: m.detach().clone() for name, m in pruner._masks.items()}
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
    teacher, student = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=0)
    keep_groups = [{0, 3}, {1, 2}]
    gen = torch.Generator().manual_seed(7)
    keep_channels = [torch.randperm(96, generator=gen)[:48] for _ in range(2)]
    _plant(teacher, student, keep_groups, keep_channels, 2 * 16)
    student.requires_grad_(False)
    truth = {
        "heads": torch.tensor([[1.0 if g in keep_groups[l] else 0.0 for g in range(4)] for l in range(2)]),
        "ffn": torch.zeros(2, 96),
    }
    for l in range(2):
        truth["ffn"][l, keep_channels[l]] = 1.0
    config = lp.GradualConfig(structures=("heads", "ffn"), target_sparsity=0.5, warmup_steps=100, gate_lr=0.05)
    pruner = lp.attach(student, config)
    pruner.state.regularizer.target_sparsity = float(pruner.cost.sparsity(truth))
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    pruner.hook_optimizer(optimizer)
    student.train()
    data = torch.Generator().manual_seed(1)
    for _ in range(200):
        ids = torch.randint(0, 128, (8, 12), generator=data)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = torch.nn.functional.mse_loss(student(input_ids=ids).logits, target) / target.var()
        optimizer.zero_grad()
        (loss + pruner.penalty()).backward()
        optimizer.step()
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
