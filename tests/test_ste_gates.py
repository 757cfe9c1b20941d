"""Straight-through binary gates: the training forward is already binary (identity STE), so the exported
model computes exactly what the model computed in training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.gates.ste import STEGate, identity_ste


def test_identity_ste_is_binary_forward_and_identity_backward():
    scores = torch.tensor([[-0.7, -1e-8, 0.0, 1e-8, 0.3]], requires_grad=True)
    mask = identity_ste(scores)
    assert mask.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]  # exactly binary, no rounding residue
    (mask * torch.arange(5.0)).sum().backward()
    assert scores.grad.tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]]  # ∂M/∂s := 1


def test_pruned_units_still_get_gradient():
    gate = STEGate(1, 4)
    with torch.no_grad():
        gate.scores.copy_(torch.tensor([[-0.5, 0.5, -0.2, 0.9]]))
    assert not gate.exact_zero_gradient
    (gate.sample() * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert bool((gate.scores.grad != 0).all())
    assert gate.learned_counts().tolist() == [2.0]


def _spread_scores(pruner, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.scores.copy_(torch.randn(gate.scores.shape, generator=gen))


@pytest.mark.parametrize("lora", [False, True])
def test_export_equals_training_time_forward(lora):
    model = tiny_causal_lm("llama")  # attention_dropout = 0: train mode differs from eval only by the gates
    if lora:
        model = with_lora(model)
    pruner = lp.attach(model, lp.STEConfig(structures=("heads", "ffn", "hidden", "attn_block")))
    _spread_scores(pruner)
    with torch.no_grad():
        pruner.gates["attn_block"].scores.copy_(torch.tensor([[-0.5, 0.5]]))  # one attention block dropped
    model.train()
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        sampled = {name: pruner.mask(name).clone() for name in pruner.specs}
    masks = pruner.deterministic_masks()
    for name in pruner.specs:
        assert torch.equal(sampled[name], masks[name]), name
        assert 0 < int(masks[name].sum()) < masks[name].numel(), name  # a non-trivial mask
    compact = pruner.export()
    with torch.no_grad():
        out = compact(input_ids=ids).logits
    diff = float((trained - out).abs().max())
    assert diff <= 1e-5 * float(trained.abs().max()), diff


def test_lagrangian_training_reaches_the_target_and_export_stays_exact(one_thread):
    torch.manual_seed(0)
    teacher, model = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    config = lp.STEConfig(
        structures=("heads", "ffn"), target_sparsity=0.4, gate_lr=0.02, lagrangian_lr=0.1, warmup_steps=50
    )
    pruner = lp.attach(model, config)
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    pruner.hook_optimizer(optimizer)
    model.train()
    gen = torch.Generator().manual_seed(1)
    history = []
    for step in range(200):
        ids = torch.randint(0, 128, (4, 8), generator=gen)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = torch.nn.functional.mse_loss(model(input_ids=ids).logits, target) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 150:
            history.append(pruner.stats()["exact_sparsity"])
    stats = pruner.stats()
    late_mean = sum(history) / len(history)
    print("STE Lagrangian: final exact sparsity", stats["exact_sparsity"], "mean of the last 50 steps", late_mean)
    assert stats["exact_sparsity"] == pytest.approx(stats["expected_sparsity"])  # the STE size is the exact size
    # every score moves at Adam's step size at once, so the binary size oscillates around the target
    assert abs(late_mean - 0.4) <= 0.05, history
    assert abs(stats["exact_sparsity"] - 0.4) <= 0.1, stats
    ids = torch.randint(0, 128, (2, 8), generator=gen)
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    compact = pruner.export()
    with torch.no_grad():
        assert float((compact(input_ids=ids).logits - trained).abs().max()) <= 1e-5 * float(trained.abs().max())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"match_target": True}, "match_target"),
        ({"init_score": 0.0}, "init_score"),
        ({"init_score": -1.0}, "init_score"),
        ({"score_clamp": 0.0}, "score_clamp"),
        ({"init_score": 2.0, "score_clamp": 1.0}, "init_score"),
        ({"target_sparsity": 1.5}, "target_sparsity"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(PruningConfigError, match=field):
        lp.STEConfig(**kwargs)


def test_registered_as_gate_kind_and_method():
    from lightning_prune.gates import available_gates
    from lightning_prune.methods import method_config_class

    assert {"scale", "ste"} <= set(available_gates())
    assert method_config_class("ste") is lp.STEConfig
