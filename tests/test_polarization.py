"""Polarization pruning (Zhuang et al., NeurIPS 2020): bimodal scale gates, histogram-valley decision,
clamping, mean variants of the regulariser, folded export and config validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_causal_lm, with_lora
from test_planted_structure import _plant, _precision_recall

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.gates.scale import ScaleGate, valley_threshold
from lightning_prune.methods.polarization import marginal_unit_costs, polarization_terms


def _planted_pair(amplify: float = 8.0):
    """The planted task of ``test_planted_structure`` with the kept FFN channels amplified in teacher and student,
    so every kept channel carries a task gradient larger than the regulariser's push (in the random tiny model a
    single FFN channel barely moves the logits)."""
    teacher, student = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=0)
    keep_groups = [{0, 3}, {1, 2}]
    gen = torch.Generator().manual_seed(7)
    keep_channels = [torch.randperm(96, generator=gen)[:48] for _ in range(2)]
    _plant(teacher, student, keep_groups, keep_channels, 2 * 16)
    with torch.no_grad():
        for layer in range(2):
            for model in (teacher, student):
                model.model.layers[layer].mlp.down_proj.weight[:, keep_channels[layer]] *= amplify
    for p in student.parameters():
        p.requires_grad_(False)
    truth = {
        "heads": torch.tensor([[1.0 if g in keep_groups[l] else 0.0 for g in range(4)] for l in range(2)]),
        "ffn": torch.zeros(2, 96),
    }
    for layer in range(2):
        truth["ffn"][layer, keep_channels[layer]] = 1.0
    return teacher, student, truth


def test_polarization_is_bimodal_and_valley_recovers_planted_units(one_thread):
    torch.manual_seed(0)
    teacher, student, truth = _planted_pair()
    # the paper's t = 1 (Theorem 3.2: the regulariser alone keeps 1/4); λ larger than 1e-4 for a 300-step run
    pruner = lp.attach(student, lp.PolarizationConfig(structures=("heads", "ffn"), reg_lambda=1e-3, t=1.0))
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0, gate_lr=0.02))
    pruner.hook_optimizer(optimizer)
    student.train()
    data_gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        ids = torch.randint(0, 128, (8, 12), generator=data_gen)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = torch.nn.functional.mse_loss(student(input_ids=ids).logits, target) / target.var()
        optimizer.zero_grad()
        (loss + pruner.penalty()).backward()
        optimizer.step()

    masks = pruner.deterministic_masks()
    report = {}
    for name in ("heads", "ffn"):
        gamma = pruner.gates[name].gamma.detach()
        kept, pruned = gamma[truth[name] == 1], gamma[truth[name] == 0]
        precision, recall = _precision_recall(masks[name], truth[name])
        report[name] = {
            "gap": float(kept.min() - pruned.max()),
            "pruned_near_zero": float((pruned <= 0.01).float().mean()),
            "kept_median": float(kept.median()),
            "threshold": pruner.gates[name].valley_thresholds().tolist(),
            "precision": precision,
            "recall": recall,
        }
    print("polarization planted:", report)
    for name, r in report.items():
        assert r["gap"] > 0.25, (name, report)  # bimodal: a clear margin between the two populations
        assert r["pruned_near_zero"] >= 0.95, (name, report)
        assert r["kept_median"] >= 0.95, (name, report)
        assert r["precision"] >= 0.95 and r["recall"] >= 0.95, (name, report)
    # eval masks carry the learned scales of the kept units (γ · decision)
    assert torch.equal(masks["ffn"], pruner.gates["ffn"].gamma.detach() * (masks["ffn"] != 0))


def test_valley_threshold_finds_first_valley_and_reports_none_without_one():
    values = torch.tensor([0.0, 0.0, 0.001, 0.5, 0.97, 0.98, 0.99])
    assert valley_threshold(values) == pytest.approx(0.01)
    # counts 1, 2, 3, 4 in 4 bins only increase: no valley
    increasing = torch.tensor([0.1, 0.3, 0.3, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9])
    assert valley_threshold(increasing, bins=4) is None


def test_valley_guard_keeps_at_least_one_unit_per_row():
    gate = ScaleGate(3, 10, bins=4)
    with torch.no_grad():
        gate.gamma[0] = torch.tensor([0.1, 0.3, 0.3, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9])  # no valley: γ > 0.01 kept
        gate.gamma[1] = torch.linspace(0.0, 0.009, 10)  # everything below the valley: the best unit survives
        gate.gamma[2] = torch.tensor([0.0] * 7 + [0.8, 0.9, 1.0])  # a valley: the three large ones
    counts = gate.learned_counts()
    assert counts.tolist() == [10.0, 1.0, 3.0]
    mask = gate.deterministic(counts.round().long())
    assert int(mask[1].argmax()) == 9 and int(mask[1].sum()) == 1


def test_gamma_is_clamped_after_steps_and_gates_have_no_weight_decay():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.PolarizationConfig(structures=("heads", "ffn"), reg_lambda=1.0, t=0.5))
    groups = pruner.param_groups(lr=1e-3, weight_decay=0.1, gate_lr=5.0)
    gate_group = next(g for g in groups if g["name"] == "lightning_prune.gates")
    assert gate_group["weight_decay"] == 0.0
    assert {id(p) for p in gate_group["params"]} == {id(g.gamma) for g in pruner.gates.values()}
    optimizer = torch.optim.SGD(groups)
    pruner.hook_optimizer(optimizer)
    model.train()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        loss = model(input_ids=ids).logits.pow(2).mean() * 100 + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gammas = torch.cat([g.gamma.detach().flatten() for g in pruner.gates.values()])
    assert float(gammas.min()) >= 0.0 and float(gammas.max()) <= 1.0
    assert bool((gammas == 0.0).any())  # the lr is large enough that the clamp did act


@pytest.mark.parametrize("mean", ["global", "layer", "detached"])
def test_mean_variants_have_the_documented_gradient(mean):
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 5, generator=gen).requires_grad_(True)
    b = (torch.rand(3, 4, generator=gen) * 0.3).requires_grad_(True)  # most of b below the global mean
    t = 0.7
    polarization_terms([a, b], t, mean).backward()
    everything = torch.cat([a.detach().flatten(), b.detach().flatten()])
    for g in (a, b):
        x = g.detach()
        if mean == "layer":
            s = torch.sign(x - x.mean(-1, keepdim=True))
            expected = t * torch.sign(x) - s + s.mean(-1, keepdim=True)  # ∂/∂γ of −Σ|γ − mean(row)|
        else:
            s = torch.sign(x - everything.mean())
            expected = t * torch.sign(x) - s
            if mean == "global":
                expected = expected + torch.sign(everything - everything.mean()).mean()  # gradient through γ̄
        assert torch.allclose(g.grad, expected, atol=1e-6), (mean, g.grad, expected)
    # the global mean term is not zero here, so the variants really differ
    assert abs(float(torch.sign(everything - everything.mean()).mean())) > 0.1


def test_cost_weights_are_marginal_unit_costs():
    pruner = lp.attach(tiny_causal_lm("llama"), lp.PolarizationConfig(structures=("heads", "ffn"), cost_weighted=True))
    weights = marginal_unit_costs(pruner, "params")
    d, hd, nrep = 64, 16, 2
    head_cost = d * (nrep * hd) * 2 + d * hd * 2  # q and o rows/cols of the group's query heads, k and v
    ffn_cost = 3 * d
    ratio = float(weights["heads"][0, 0] / weights["ffn"][0, 0])
    assert ratio == pytest.approx(head_cost / ffn_cost)
    mean = torch.cat([w.flatten() for w in weights.values()]).mean()
    assert float(mean) == pytest.approx(1.0)
    assert pruner.penalty().requires_grad


def _spread(pruner, seed: int = 0) -> None:
    """γ: about a third exactly 0 (pruned by the valley), the rest in (0.3, 1] (kept, with scales to fold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in pruner.gates.values():
            values = 0.3 + 0.7 * torch.rand(gate.gamma.shape, generator=gen)
            values[torch.rand(gate.gamma.shape, generator=gen) < 0.35] = 0.0
            gate.gamma.copy_(values)


@pytest.mark.parametrize("lora", [False, True])
def test_export_folds_scales_and_equals_gated_eval_model(lora):
    model = tiny_causal_lm("llama")
    if lora:
        model = with_lora(model)
    config = lp.PolarizationConfig(structures=("heads", "ffn", "mlp_block"))
    pruner = lp.attach(model, config)
    _spread(pruner)
    masks = pruner.deterministic_masks()
    values = torch.cat([m.flatten() for m in masks.values()])
    assert bool(((values > 0) & (values < 1)).any()), "the eval masks should carry non-binary scales"
    model.eval()
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gated = model(input_ids=ids).logits
    compact = pruner.export()
    with torch.no_grad():
        out = compact(input_ids=ids).logits
    diff = float((gated - out).abs().max())
    assert diff <= 1e-4 * float(gated.abs().max()), diff
    kept = pruner.last_report.kept_units
    assert kept["ffn"] == (masks["ffn"] != 0).sum(-1).tolist()
    for layer, block in enumerate(masks["mlp_block"][0].tolist()):
        if block != 0:  # a pruned MLP block leaves an empty module
            assert compact.model.layers[layer].mlp.down_proj.weight.shape[1] == kept["ffn"][layer]
    assert not any("pruning_gates" in k or "lora" in k for k in compact.state_dict())


def test_target_decision_meets_the_size_target():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(
        model, lp.PolarizationConfig(structures=("heads", "ffn"), decision="target", target_sparsity=0.4)
    )
    assert pruner.config.match_target is True
    _spread(pruner, seed=2)
    masks = pruner.deterministic_masks()
    binary = {k: (m != 0).float() for k, m in masks.items()}
    exact = float(pruner.cost.sparsity(binary))
    assert 0.4 <= exact <= 0.4 + 0.02, exact
    # the cut is global by γ: every pruned unit has γ ≤ every kept unit of the same structure
    for name, m in binary.items():
        gamma = pruner.gates[name].gamma.detach()
        if bool((m == 0).any()) and bool((m == 1).any()):
            assert float(gamma[m == 0].max()) <= float(gamma[m == 1].min())
    compact = pruner.export()
    assert pruner.last_report.exact_sparsity == pytest.approx(exact)
    assert compact is not None


def test_hidden_is_refused_with_a_clear_error():
    with pytest.raises(PruningConfigError, match="hidden"):
        lp.PolarizationConfig(structures=("heads", "hidden"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reg_lambda": 0.0}, "reg_lambda"),
        ({"reg_lambda": -1e-4}, "reg_lambda"),
        ({"reg_lambda": math.nan}, "reg_lambda"),
        ({"reg_lambda": "1e-4"}, "reg_lambda"),
        ({"t": 2.5}, "`t`"),
        ({"t": math.inf}, "`t`"),
        ({"t": True}, "`t`"),
        ({"decision": "percent"}, "decision"),
        ({"mean": "median"}, "mean"),
        ({"init_value": 0.0}, "init_value"),
        ({"decision": "valley", "match_target": True}, "match_target"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(PruningConfigError, match=field):
        lp.PolarizationConfig(**kwargs)


def test_t_defaults_from_target_sparsity_by_theorem_3_2():
    assert lp.PolarizationConfig(target_sparsity=0.75).t == pytest.approx(1.0)  # ρ = 1/2 − t/4 = 1/4 kept
    assert lp.PolarizationConfig(target_sparsity=0.5).t == pytest.approx(0.0)
    assert lp.methods.method_config_class("polarization") is lp.PolarizationConfig
