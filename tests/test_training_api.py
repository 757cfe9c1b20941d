"""The plain-PyTorch training contract: penalty, optimizer groups, multiplier ascent, schedule, clamping,
fp32 gates, determinism of eval masks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.constraint import linear_warmup
from lightning_prune.gates import HardConcreteGate


def test_hard_concrete_constants_and_probability():
    gate = HardConcreteGate(1, 3, init_log_alpha=0.0, init_std=0.0)
    p = gate.keep_probability()
    expected = 1 / (1 + math.exp(-(0.0 - (2 / 3) * math.log(0.1 / 1.1))))
    assert torch.allclose(p, torch.full_like(p, expected))
    with torch.no_grad():
        gate.log_alpha.fill_(10.0)
    gate.post_step_()
    assert float(gate.log_alpha.max()) == pytest.approx(math.log(100.0))
    torch.manual_seed(0)
    samples = torch.stack([gate.sample() for _ in range(2000)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert float((samples == 1).float().mean()) > 0.9  # near "keep" at the clamp


def test_deterministic_keeps_exactly_k_by_score():
    gate = HardConcreteGate(2, 5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, -2.0, 4.0]]))
    mask = gate.deterministic(torch.tensor([2, 3]))
    assert mask.tolist() == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 1]]  # ties broken by index


def test_param_groups_separate_gates_and_multipliers():
    model = with_lora(tiny_causal_lm("llama"))
    pruner = lp.attach(model, lp.L0Config(gate_lr=0.2, lagrangian_lr=0.03))
    groups = {g["name"]: g for g in pruner.param_groups(lr=1e-3, weight_decay=0.1)}
    assert set(groups) == {"model", "lightning_prune.gates", "lightning_prune.multipliers"}
    assert groups["lightning_prune.gates"]["lr"] == 0.2 and groups["lightning_prune.gates"]["weight_decay"] == 0
    assert groups["lightning_prune.multipliers"]["lr"] == 0.03
    ids = [{id(p) for p in g["params"]} for g in groups.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # the model group holds exactly the trainable LoRA parameters (the base is frozen by peft)
    lora_ids = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert ids[0] == lora_ids


def test_multipliers_ascend_and_gates_descend_towards_target():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("ffn",), gate_lr=0.05))
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    start = float(pruner.expected_sparsity())
    for _ in range(5):
        optimizer.zero_grad()
        pruner.penalty().backward()
        optimizer.step()
        pruner.step()
    # expected sparsity (≈0.01) is below target: ascent makes λ1 negative, which pushes sparsity up
    assert float(pruner.state.regularizer.constraint.lambda_1) < 0
    assert float(pruner.expected_sparsity()) > start
    assert pruner.pruning_step == 5


def test_target_warmup_schedule():
    assert linear_warmup(0.6, 0, 100) == 0.0
    assert linear_warmup(0.6, 50, 100) == pytest.approx(0.3)
    assert linear_warmup(0.6, 500, 100) == 0.6
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.4, warmup_steps=10))
    pruner.pruning_step = 5
    assert pruner.current_target() == pytest.approx(0.2)


def test_gates_stay_fp32_when_model_is_cast():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config())
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in pruner.state.parameters())
    assert next(model.model.parameters()).dtype == torch.bfloat16
    model.train()
    out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_eval_masks_do_not_depend_on_the_batch_and_training_masks_are_sampled():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn")))
    with torch.no_grad():
        pruner.gates["ffn"].log_alpha.normal_(0, 2)
    model.eval()
    model(input_ids=torch.tensor([[1, 2, 3]]))
    first = {k: v.clone() for k, v in pruner._masks.items()}
    model(input_ids=torch.randint(0, 128, (4, 9)))
    assert all(torch.equal(first[k], pruner._masks[k]) for k in first)
    assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in first.values())
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3]]))
    a = pruner._masks["ffn"].clone()
    model(input_ids=torch.tensor([[1, 2, 3]]))
    assert not torch.equal(a, pruner._masks["ffn"])


def test_dense_phase_is_the_unmodified_model_and_frozen_is_deterministic():
    model = tiny_causal_lm("llama")
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        dense_logits = model(input_ids=ids).logits
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn", "hidden")))
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.log_alpha.normal_(0, 3)
    pruner.set_phase("dense")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense_logits)
    assert float(pruner.penalty()) == 0.0
    pruner.set_phase("frozen")
    model.train()
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = model(input_ids=ids).logits
    assert torch.equal(a, b) and not torch.equal(a, dense_logits)


def test_stats_are_plain_floats():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn")))
    stats = pruner.stats()
    assert {"target_sparsity", "expected_sparsity", "exact_sparsity", "lambda_1", "lambda_2", "kept/heads"} <= set(
        stats
    )
    assert all(isinstance(v, float) for v in stats.values())


def test_cost_model_counts_are_exact_beyond_float32_precision():
    """2**24 + 1 parameters cannot be represented in float32; the count must still be exact."""
    from lightning_prune.cost import CostModel, CostTerm, Dim

    cost = CostModel([CostTerm("w", Dim(4097, "ffn", 0, 1), Dim(4097), prunable=True)])
    mask = torch.ones(1, 4097)
    assert int(cost.total({"ffn": mask})[0]) == 4097 * 4097  # odd and > 2**24
    mask[0, :2] = 0
    assert int(cost.total({"ffn": mask})[0]) == 4095 * 4097
    assert cost.sparsity({"ffn": mask}).dtype == torch.float32


def test_ungated_runs_the_model_as_before_attach_and_restores_the_masks():
    """``pruner.ungated()`` (self-distillation's teacher pass): inside, the model computes what it computed before
    attach, whatever the gates say; after, the phase, the masks of the forward in progress and their derived values
    are the same objects as before, and the masks act again."""
    model = tiny_causal_lm("llama")
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn", "hidden")))
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.log_alpha.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(1))
        gated = model(input_ids=ids).logits
        assert (gated - dense).abs().max() > 1e-3  # the masks change the function
        masks, cache = pruner._masks, dict(pruner._cache)
        with pruner.ungated():
            assert pruner.phase == "dense" and pruner.mask("heads") is None
            assert torch.allclose(model(input_ids=ids).logits, dense, atol=1e-6)
        assert pruner.phase == "prune" and pruner._masks is masks and pruner._cache == cache
        assert torch.allclose(model(input_ids=ids).logits, gated, atol=1e-6)
