"""``reset_optimizer_at_freeze`` (issue #18): when the masks freeze, the model's weights restart with fresh optimizer
state (as after the cut of a prune-then-fine-tune pipeline); the gates' and multipliers' state is kept; a run
resumed after the freeze never resets the state it restored. Lightning callback, HF Trainer and the recipe."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_causal_lm
from lightning_helpers import config, hf_token_rows, hf_training_args, lit_llama, loader, trainer

import lightning_prune as lp
from lightning_prune import recipes
from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

FREEZE, STEPS = 5, 8


def _adam_steps(optimizer: torch.optim.Optimizer, params) -> set[int]:
    return {int(optimizer.state[p]["step"]) for p in params if p in optimizer.state}


def _callback(pruning_config=None, dense_steps: int = 2, **kwargs) -> lp.PruningCallback:
    """The callback of these tests: masks frozen at ``FREEZE``, nothing plotted or logged."""
    return lp.PruningCallback(
        pruning_config or config(),
        dense_steps=dense_steps,
        freeze_after_steps=FREEZE,
        plot=False,
        log_stats=False,
        prog_bar=False,
        **kwargs,
    )


def _weights(model: torch.nn.Module, pruner) -> list[torch.nn.Parameter]:
    """The model's trainable weights, without the pruning state's gates and multipliers."""
    ours = {id(p) for p in pruner.state.parameters()}
    return [p for p in model.parameters() if id(p) not in ours and p.requires_grad]


@pytest.mark.parametrize("reset", [True, False])
def test_lightning_callback_resets_the_weights_state_once_at_the_freeze(reset):
    module = lit_llama()
    callback = _callback(reset_optimizer_at_freeze=reset)
    fit = trainer(STEPS, [callback])
    fit.fit(module, loader())
    optimizer = fit.optimizers[0]
    pruner = callback.pruner
    # Adam's step count of a weight: steps since its state was created
    assert _adam_steps(optimizer, _weights(module, pruner)) == ({STEPS - FREEZE} if reset else {STEPS})
    assert _adam_steps(optimizer, pruner.gate_parameters()) == {STEPS}  # gates and λ keep theirs


def test_lightning_resume_after_the_freeze_keeps_the_restored_state(tmp_path):
    """Stop after the freeze, resume: the restored state continues (no second reset)."""

    def run(max_steps: int, ckpt=None):
        module = lit_llama()
        callback = _callback(reset_optimizer_at_freeze=True)
        fit = trainer(max_steps, [callback], enable_checkpointing=True, default_root_dir=tmp_path)
        fit.fit(module, loader(), ckpt_path=ckpt)
        return fit, module, callback

    first, _, _ = run(FREEZE + 1)
    ckpt = tmp_path / "after_freeze.ckpt"
    first.save_checkpoint(ckpt)
    resumed, module, callback = run(STEPS, ckpt)
    assert _adam_steps(resumed.optimizers[0], _weights(module, callback.pruner)) == {STEPS - FREEZE}


def test_hf_trainer_resets_the_weights_state_at_the_freeze(tmp_path):
    transformers.set_seed(0)
    model = tiny_causal_lm("llama").train()
    callback = PruningTrainerCallback(
        config(), dense_steps=2, freeze_after_steps=FREEZE, plot=False, reset_optimizer_at_freeze=True
    )
    args = hf_training_args(tmp_path, max_steps=STEPS)
    data = hf_token_rows()
    hf = PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    hf.train()
    assert _adam_steps(hf.optimizer, _weights(model, hf.pruner)) == {STEPS - FREEZE}
    assert _adam_steps(hf.optimizer, hf.pruner.gate_parameters()) == {STEPS}


def test_recipe_phases_follow_the_run_length_and_the_callbacks_accept_its_schedule():
    config_, phases = recipes.l0(target_sparsity=0.5, max_steps=100)  # short run: dense 10%, warm-up 30%, freeze 50%
    assert (phases["dense_steps"], config_.warmup_steps, phases["freeze_after_steps"]) == (10, 30, 50)
    assert (config_.gate_lr, config_.lagrangian_lr, phases["reset_optimizer_at_freeze"]) == (0.5, 0.5, True)
    assert recipes.l0_callback(0.5, 100, plot=False).reset_optimizer_at_freeze is True
    long_config, long_phases = recipes.l0(target_sparsity=0.5, max_steps=300)  # long: dense 30%, 5%, freeze 40%
    assert (long_phases["dense_steps"], long_config.warmup_steps, long_phases["freeze_after_steps"]) == (90, 15, 120)
    fixed = recipes.L0Schedule(dense=0.2, gate_lr=0.3, reset_optimizer_at_freeze=False)  # explicit values win
    config_fixed, phases_fixed = recipes.l0(0.5, 300, schedule=fixed)
    assert (config_fixed.gate_lr, phases_fixed["dense_steps"], phases_fixed["reset_optimizer_at_freeze"]) == (
        0.3,
        60,
        False,
    )
    PruningTrainerCallback(config_, **phases)  # the HF integration takes the same keywords
    with pytest.raises(lp.PruningConfigError, match="reset_optimizer_at_freeze"):
        lp.PruningCallback(config_, reset_optimizer_at_freeze="yes")


@pytest.mark.parametrize("slow", [True, False])
def test_freezing_far_from_the_target_warns_with_the_fix(slow):
    """Gates that cannot follow the warm-up (tiny learning rates) freeze far from the target: the exact-target cut did
    the pruning, and the user is told how to let the gates learn it; gates that could keep up are not warned about."""
    import warnings

    overrides = dict(gate_lr=1e-4, lagrangian_lr=1e-4) if slow else dict(target_sparsity=0.05)
    callback = _callback(config(warmup_steps=2, **overrides), dense_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(STEPS, [callback]).fit(lit_llama(), loader())
    lag = [w for w in caught if "masks froze with the gates' expected sparsity" in str(w.message)]
    assert bool(lag) == slow
    assert not [w for w in caught if "requires_grad=True to a scalar" in str(w.message)]  # the check is quiet
    if slow:
        assert "Raise `gate_lr` and `lagrangian_lr`" in str(lag[0].message)


def test_ste_mask_is_projected_onto_the_target_at_the_freeze_and_exported_as_trained():
    """STE gates that the Lagrangian has not brought to the target (tiny learning rates) meet it from the freeze on;
    the frozen phase trains with the projected mask, and the export is that mask."""
    target = 0.4
    callback = _callback(
        lp.STEConfig(target_sparsity=target, structures=("heads", "ffn"), warmup_steps=2, gate_lr=1e-5), dense_steps=1
    )
    trainer(STEPS, [callback]).fit(lit_llama(), loader())
    pruner = callback.pruner
    masks = pruner.deterministic_masks()
    exact = float(pruner.cost.sparsity(masks, "params"))
    assert target <= exact <= target + 0.05  # the units' granularity: a head is ~7% of this model's parameters
    trained = {name: (gate.score() > 0).float() for name, gate in pruner.gates.items()}
    assert all(torch.equal(masks[n], trained[n]) for n in masks)  # export mask == training mask
    compact = pruner.export()
    assert pruner.last_report.params_after < pruner.last_report.params_before and compact is not None


def test_ste_projection_through_the_plain_api():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.STEConfig(target_sparsity=0.4, structures=("ffn",)))
    pruner.set_phase("prune")
    before = float(pruner.cost.sparsity(pruner.deterministic_masks(), "params"))
    pruner.set_phase("frozen")
    after = float(pruner.cost.sparsity(pruner.deterministic_masks(), "params"))
    assert before == 0.0 and 0.4 <= after <= 0.41


@pytest.mark.parametrize("integration", ["lightning", "hf"])
def test_a_run_ending_at_the_freeze_exports_frozen_masks_in_both_integrations(integration, tmp_path, monkeypatch):
    """``max_steps == freeze_after_steps``: no frozen step runs, but the run reached the freeze, so both integrations
    freeze before the export (``config.on_freeze`` once, phase ``frozen``); they used to differ here."""
    frozen_at = []
    monkeypatch.setattr(lp.L0Config, "on_freeze", lambda self, pruner: frozen_at.append(pruner.phase))
    if integration == "lightning":
        callback = _callback()
        trainer(FREEZE, [callback]).fit(lit_llama(), loader())
    else:
        callback = PruningTrainerCallback(config(), dense_steps=2, freeze_after_steps=FREEZE, plot=False)
        args = hf_training_args(tmp_path, max_steps=FREEZE)
        PruningTrainer(
            model=tiny_causal_lm("llama").train(), args=args, train_dataset=hf_token_rows(), callbacks=[callback]
        ).train()
    assert len(frozen_at) == 1 and callback.phase == "frozen" and callback.pruner.phase == "frozen"
    assert callback.pruner.pruning_step == callback.pruning_step_at(FREEZE)
