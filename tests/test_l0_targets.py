"""Sheared-LLaMA's targeted structured pruning (``L0Config(target_architecture=...)``).

A short run on a tiny GQA Llama (8 query heads over 4 KV groups) must end with exactly the asked counts in every
layer, the per-structure Lagrangian must drive the *expected* counts to their targets, and the export must be a
standard config of the target sizes that loads with plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.l0_targets import TargetArchitectureRegularizer

TARGET = {"heads": 2, "ffn": 48, "hidden": 32}  # tiny model: 4 KV groups, 96 FFN channels, 64 hidden dims
STRUCTURES = ("heads", "ffn", "hidden")


def _train(steps: int = 200, warmup: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_causal_lm("llama", seed=seed).train()
    config = lp.L0Config(structures=STRUCTURES, target_architecture=TARGET, warmup_steps=warmup, gate_lr=0.1)
    pruner = lp.attach(model, config)
    start = {k: v.detach().clone() for k, v in pruner.state.regularizer.expected_counts(pruner).items()}
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    pruner.hook_optimizer(optimizer)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 128, (4, 16), generator=gen)
        loss = model(input_ids=x, labels=x).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, pruner, start


@pytest.fixture(scope="module")
def trained():
    return _train()


def test_lagrangian_drives_expected_counts_to_the_targets(trained):
    _, pruner, start = trained
    units = {"heads": 4, "ffn": 96, "hidden": 64}
    expected = pruner.state.regularizer.expected_counts(pruner)
    for name, k in TARGET.items():
        # started near the dense size (init log α = 3), ended near the target in every row
        assert start[name].min() > 0.9 * units[name], (name, start[name])
        tol = 0.05 * units[name]
        assert (expected[name] - k).abs().max() < tol, (name, expected[name].tolist(), k)
    # one pair of multipliers per structure, all pushed away from 0 by the ascent
    reg = pruner.state.regularizer
    assert isinstance(reg, TargetArchitectureRegularizer)
    assert set(reg.constraints) == set(TARGET)
    assert all(float(c.lambda_1.detach()) != 0.0 for c in reg.constraints.values())


def test_deterministic_masks_keep_exactly_the_target_in_every_layer(trained):
    _, pruner, _ = trained
    masks = pruner.deterministic_masks()
    for name, k in TARGET.items():
        assert masks[name].sum(-1).tolist() == [k] * masks[name].shape[0], name
    stats = pruner.stats()
    assert stats["kept/heads"] == 2 and stats["kept/ffn"] == 48 and stats["kept/hidden"] == 32
    # the sparsity is derived from the architecture and reported as the (warmed-up) target
    derived = pruner.state.regularizer.derived_sparsity
    assert 0.0 < derived < 1.0
    assert pruner.current_target() == pytest.approx(derived)
    assert stats["exact_sparsity"] == pytest.approx(derived, abs=1e-6)


def test_export_is_a_standard_config_of_the_target_sizes(trained, tmp_path):
    import transformers

    model, pruner, _ = trained
    pruner.save_compact(tmp_path / "compact")
    report = pruner.last_report
    assert report.uniform and report.max_abs_diff <= 1e-4 * max(report.reference_scale, 1.0)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "compact").float().eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    cfg = loaded.config
    assert cfg.num_key_value_heads == TARGET["heads"]
    assert cfg.num_attention_heads == TARGET["heads"] * 2  # 2 query heads per KV group are kept with it
    assert cfg.intermediate_size == TARGET["ffn"]
    assert cfg.hidden_size == TARGET["hidden"]
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        gated = model(input_ids=x).logits  # eval mode: the deterministic target masks
        compact = loaded(input_ids=x).logits
    assert (gated - compact).abs().max() < 1e-4 * max(gated.abs().max().item(), 1.0)


def test_target_rises_from_the_dense_size_during_warmup():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(structures=("heads",), target_architecture={"heads": 1}, warmup_steps=10))
    reg = pruner.state.regularizer
    assert reg.structure_target("heads", 0) == 0.0
    assert reg.structure_target("heads", 5) == pytest.approx(0.5 * 0.75)
    assert reg.structure_target("heads", 50) == pytest.approx(0.75)
    assert pruner.penalty().requires_grad


def test_config_round_trips_through_to_dict():
    config = lp.L0Config(structures=("heads", "ffn"), target_architecture={"heads": 2, "ffn": 48})
    values = config.to_dict()
    values.pop("method")
    again = lp.L0Config(**values)
    assert again.target_architecture == {"heads": 2, "ffn": 48}
    assert again.keep_units == {"heads": 2, "ffn": 48}
    assert lp.L0Config().target_sparsity == 0.5  # the default without a target architecture is unchanged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 0.3, "target_architecture": {"heads": 2}}, "Conflicting targets"),
        ({"keep_units": {"heads": 3}, "target_architecture": {"heads": 2}}, "Conflicting targets for 'heads'"),
        ({"target_architecture": {"headz": 2}}, "unknown structure 'headz'"),
        ({"target_architecture": {"query_heads": 4}}, "key/value groups"),
        ({"target_architecture": {"hidden": 32}}, "not in `structures`"),
        ({"structures": ("heads", "ffn"), "target_architecture": {"heads": 2}}, "no count for the gated structure"),
        ({"target_architecture": {"heads": 0}}, "positive int"),
        ({"target_architecture": {"heads": 2.5}}, "positive int"),
        ({"target_architecture": {}}, "non-empty dict"),
    ],
)
def test_bad_target_architecture_is_refused_early(kwargs, message):
    kwargs.setdefault("structures", ("heads",))
    with pytest.raises(PruningConfigError, match=message):
        lp.L0Config(**kwargs)


def test_counts_larger_than_the_model_are_refused_at_attach():
    model = tiny_causal_lm("llama")  # 4 KV groups (8 query heads), 96 FFN channels
    with pytest.raises(PruningConfigError, match=r"exceeds the 4 units.*key/value groups"):
        lp.attach(model, lp.L0Config(structures=("heads",), target_architecture={"heads": 8}))
    with pytest.raises(PruningConfigError, match="exceeds the 96 units"):
        lp.attach(model, lp.L0Config(structures=("ffn",), target_architecture={"ffn": 97}))
    assert not hasattr(model, "pruning_gates")  # nothing was attached


def test_export_report_states_the_target_architecture_sparsity():
    """A target architecture implies a sparsity; the report says it (not the unused ``target_sparsity=0``)."""
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_architecture={"heads": 2, "ffn": 48}))
    implied = pruner.final_target()
    pruner.export()
    assert pruner.last_report.target_sparsity == pytest.approx(implied)
    assert pruner.last_report.target_sparsity == pytest.approx(pruner.last_report.exact_sparsity, abs=1e-6)
    assert 0.3 < implied < 0.7


def test_stats_log_every_structure_multiplier_under_its_own_name():
    pruner = lp.attach(tiny_causal_lm("llama"), lp.L0Config(target_architecture={"heads": 2, "ffn": 48}))
    with torch.no_grad():
        for i, p in enumerate(pruner.multiplier_parameters()):
            p.fill_(float(i + 1))
    logged = {k: v for k, v in pruner.stats().items() if "lambda" in k}
    assert len(logged) == len(pruner.multiplier_parameters()) == 4
    assert sorted(logged.values()) == [1.0, 2.0, 3.0, 4.0]  # none overwritten by another structure's
    assert {k.split("/")[-2] for k in logged} == {"heads", "ffn"}
