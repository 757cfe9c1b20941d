"""Importance-initialised gates (issue #18): Fisher scores of the dense phase, the gate init they give, and the
integrations that run them (plain API, Lightning callback, HF Trainer)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.errors import AttachStateError, PruningConfigError
from lightning_prune.importance import importance_masks, importance_per_cost, unit_costs

KEEP_GROUPS = [{0, 3}, {1, 2}]  # KV groups that carry signal in each layer; the others are useless
NREP_HD = 2 * 16  # o_proj input columns per KV group (2 query heads of dim 16)


def _planted(seed: int = 0):
    """A tiny Llama whose useless units write nothing: their o_proj / down_proj input columns are zero, so the
    gradient of their mask (Σ activation · grad through a zero column) is exactly 0."""
    model = tiny_causal_lm("llama", seed=seed)
    gen = torch.Generator().manual_seed(7)
    useless_ffn = [torch.randperm(96, generator=gen)[:40] for _ in range(2)]
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            for group in range(4):
                if group not in KEEP_GROUPS[layer]:
                    block.self_attn.o_proj.weight[:, group * NREP_HD : (group + 1) * NREP_HD] = 0.0
            block.mlp.down_proj.weight[:, useless_ffn[layer]] = 0.0
    return model.train(), useless_ffn


def _batches(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (4, 16), generator=gen) for _ in range(n)]


def _dense_phase(pruner, model, batches, lr: float = 0.0):
    """Training backwards in the dense phase (an optimizer over the model only, lr 0 by default: the Fisher of the
    start model)."""
    pruner.set_phase("dense")
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if "pruning_gates" not in n], lr=lr)
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _config(**kw):
    return lp.L0Config(**({"target_sparsity": 0.5, "structures": ("heads", "ffn"), "init_from_importance": True} | kw))


def test_fisher_scores_rank_planted_useless_units_lowest():
    model, useless_ffn = _planted()
    pruner = lp.attach(model, _config())
    _dense_phase(pruner, model, _batches())
    assert int(pruner.importance.batches) == 4
    heads, ffn = pruner.importance.fisher("heads"), pruner.importance.fisher("ffn")
    for layer in range(2):
        useless = [g for g in range(4) if g not in KEEP_GROUPS[layer]]
        useful = sorted(KEEP_GROUPS[layer])
        assert torch.all(heads[layer, useless] == 0)
        assert torch.all(heads[layer, useful] > 0)
        mask = torch.zeros(96, dtype=torch.bool)
        mask[useless_ffn[layer]] = True
        assert torch.all(ffn[layer, mask] == 0)
        assert torch.all(ffn[layer, ~mask] > 0)


def test_fisher_equals_squared_mask_gradient_of_each_batch():
    """The probe's sum is Σ_batches (∂L/∂m)² of an explicit all-ones mask on the FFN channels (the Taylor term)."""
    batches = _batches(2)
    reference, _ = _planted()
    expected = torch.zeros(2, 96)
    for ids in batches:
        ones = [torch.ones(96, requires_grad=True) for _ in range(2)]
        handles = [
            block.mlp.down_proj.register_forward_pre_hook(lambda m, args, o=o: (args[0] * o,))
            for block, o in zip(reference.model.layers, ones)
        ]
        reference(input_ids=ids, labels=ids).loss.backward()
        for h in handles:
            h.remove()
        expected += torch.stack([o.grad for o in ones]).pow(2)
        reference.zero_grad()
    model, _ = _planted()
    pruner = lp.attach(model, _config())
    _dense_phase(pruner, model, batches)  # lr 0: every batch sees the same weights
    assert torch.allclose(pruner.importance.fisher("ffn"), expected, rtol=1e-4, atol=1e-12)


def test_init_orders_gates_as_the_scores_and_masks_are_the_one_shot_selection():
    model, _ = _planted()
    pruner = lp.attach(model, _config(target_sparsity=0.6))
    _dense_phase(pruner, model, _batches())
    ranks = pruner.init_gates_from_importance_()
    scores = importance_per_cost(pruner.importance.synced(), unit_costs(pruner))
    flat_scores = torch.cat([scores[n].flatten() for n in pruner.specs])
    flat_alpha = torch.cat([pruner.gates[n].log_alpha.detach().flatten() for n in pruner.specs])
    order = torch.argsort(flat_scores, stable=True)
    assert torch.all(flat_alpha[order][1:] > flat_alpha[order][:-1])  # strictly increasing with the score
    assert float(flat_alpha.max()) == pytest.approx(3.0, abs=0.05)  # the top unit keeps the init
    assert float(flat_alpha.min()) == pytest.approx(0.0, abs=0.05)  # the default spread: 3 below
    assert set(ranks) == {"heads", "ffn"}
    pruner.set_phase("prune")
    # at the final target the deterministic masks are the one-shot selection, and remove the planted units
    pruner.pruning_step = 10**6
    masks = pruner.deterministic_masks()
    selected = importance_masks(pruner)
    for name in pruner.specs:
        assert torch.equal(masks[name], selected[name]), name
    for layer in range(2):
        kept = {g for g in range(4) if masks["heads"][layer, g] > 0}
        assert kept <= KEEP_GROUPS[layer] or len(kept) > 2


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_deterministic_masks_after_init_are_the_top_k_by_score_at_the_target(target):
    """Equal at targets above the learned counts' rounding (CoFi's ``round(Σ P(kept))`` per row drops the ~5 lowest
    of 96 FFN channels of each row at init, and trimming never restores them); below it (30% here) they differ by
    those few units only."""
    model, _ = _planted(seed=1)
    pruner = lp.attach(model, _config(target_sparsity=target, warmup_steps=0))
    _dense_phase(pruner, model, _batches(3, seed=1))
    pruner.set_phase("prune")
    assert pruner.importance.done
    masks, selected = pruner.deterministic_masks(), importance_masks(pruner)
    phantom = int((pruner.gates["ffn"].units - pruner.gates["ffn"].learned_counts().round()).sum())
    for name in pruner.specs:
        differ = int((masks[name] != selected[name]).sum())
        assert differ == 0 if target >= 0.5 else differ <= 2 * phantom, (name, differ)
    assert float(pruner.cost.sparsity(masks)) >= target - 1e-6
    assert float(pruner.cost.sparsity(selected)) >= target - 1e-6


def test_probe_masks_never_enter_the_optimizer_and_dense_forward_is_unchanged():
    model, _ = _planted()
    reference, _ = _planted()
    pruner = lp.attach(model, _config())
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    pruner.set_phase("dense")
    ids = _batches(1)[0]
    out = model(input_ids=ids, labels=ids)
    assert torch.equal(out.logits, reference(input_ids=ids, labels=ids).logits)
    probes = [m for m in pruner._masks.values()]
    assert all(m.requires_grad and m.is_leaf for m in probes)
    assert not any(id(m) in in_groups for m in probes)
    assert all(id(m) not in {id(p) for p in model.parameters()} for m in probes)
    out.loss.backward()
    optimizer.step()
    # eval forwards and no-grad forwards do not probe
    batches = int(pruner.importance.batches)
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    assert int(pruner.importance.batches) == batches


def test_init_needs_scores_and_runs_once():
    model, _ = _planted()
    pruner = lp.attach(model, _config())
    with pytest.raises(AttachStateError, match="no training backward"):
        pruner.init_gates_from_importance_()
    _dense_phase(pruner, model, _batches(1))
    pruner.set_phase("prune")
    before = pruner.gates["heads"].log_alpha.detach().clone()
    pruner.set_phase("dense")
    pruner.set_phase("prune")  # already applied: no second init
    assert torch.equal(before, pruner.gates["heads"].log_alpha.detach())
    assert not lp.attach(tiny_causal_lm(), lp.L0Config(init_from_importance=False)).importance


def test_unsupported_gate_kind_is_refused():
    with pytest.raises(PruningConfigError, match="importance"):
        lp.attach(tiny_causal_lm().train(), lp.ATPConfig(target_sparsity=0.3, init_from_importance=True))


@pytest.mark.parametrize("config_cls", [lp.STEConfig, lp.PolarizationConfig])
def test_ste_and_polarization_scores_follow_the_ranks(config_cls):
    model, _ = _planted()
    config = config_cls(target_sparsity=0.5, structures=("heads", "ffn"), init_from_importance=True)
    pruner = lp.attach(model, config)
    _dense_phase(pruner, model, _batches(2))
    ranks = pruner.init_gates_from_importance_()
    for name, gate in pruner.gates.items():
        score, rank = gate.score().flatten(), ranks[name].flatten()
        order = torch.argsort(rank)
        assert torch.all(score[order][1:] >= score[order][:-1])
        assert torch.all(score > 0)  # every unit still kept (STE) / γ still near 1 (polarization)


def test_lora_model_accumulates_through_the_wrapped_modules():
    model, _ = _planted()
    model = with_lora(model)
    pruner = lp.attach(model, _config())
    pruner.set_phase("dense")
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    for ids in _batches(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert int(pruner.importance.batches) == 2
    assert float(pruner.importance.fisher("heads").sum()) > 0 and float(pruner.importance.fisher("ffn").sum()) > 0
    assert lora and all(p.requires_grad for p in lora)
    pruner.set_phase("prune")
    assert pruner.importance.done
    compact = pruner.export()
    assert compact is not None


def test_lightning_callback_initialises_at_the_transition():
    import lightning as L
    from lightning_helpers import LitLM, loader

    model, _ = _planted()
    callback = lp.PruningCallback(
        _config(target_sparsity=0.4, warmup_steps=4), dense_steps=3, freeze_after_steps=8, plot=False, log_stats=False
    )
    trainer = L.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    seen = {}
    original = lp.Pruner.init_gates_from_importance_

    def spy(self, *args, **kwargs):
        seen["batches"], seen["phase"] = int(self.importance.batches), self.phase
        return original(self, *args, **kwargs)

    lp.Pruner.init_gates_from_importance_ = spy
    try:
        trainer.fit(LitLM(model), loader())
    finally:
        lp.Pruner.init_gates_from_importance_ = original
    assert seen == {"batches": 3, "phase": "dense"}  # one probe per dense step, applied as the dense phase ends
    assert callback.pruner.importance.done
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params <= {id(p) for p in trainer.lightning_module.parameters()}  # no probe mask in it


def test_hf_trainer_initialises_at_the_transition(tmp_path):
    from test_hf_trainer import MotifTokens, training_args

    from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

    model, _ = _planted()
    callback = PruningTrainerCallback(_config(target_sparsity=0.4, warmup_steps=3), dense_steps=3, freeze_after_steps=6)
    trainer = PruningTrainer(
        model=model, args=training_args(tmp_path, 8), train_dataset=MotifTokens(16), callbacks=[callback]
    )
    trainer.train()
    importance = callback.pruner.importance
    assert importance.done and int(importance.batches) == 3
    assert float(importance.fisher("heads").sum()) > 0
    optimizer_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimizer_params <= {id(p) for p in model.parameters()}


def test_recipe_derives_config_and_schedule_from_max_steps():
    from lightning_prune import recipes

    config, phases = recipes.l0(target_sparsity=0.5, max_steps=300)
    schedule = recipes.L0_SCHEDULE
    dense, _, freeze = schedule.fractions(300)
    assert config.init_from_importance and config.target_sparsity == 0.5
    assert phases == {
        "dense_steps": int(300 * dense),
        "freeze_after_steps": int(300 * freeze),
        "reset_optimizer_at_freeze": schedule.reset_optimizer_at_freeze,
    }
    assert 0 < config.warmup_steps <= phases["freeze_after_steps"] - phases["dense_steps"]
    callback = recipes.l0_callback(0.3, 100, export_dir=None, plot=False)
    assert callback.dense_steps == max(1, int(100 * schedule.fractions(100)[0]))
    assert callback.config.target_sparsity == 0.3
    assert recipes.l0(0.5, 300, gate_lr=0.7)[0].gate_lr == 0.7  # explicit fields win
    with pytest.raises(PruningConfigError, match="max_steps"):
        recipes.l0(0.5, 3)
