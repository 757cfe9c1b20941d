"""``schedule="auto"`` (issue #18, "users take defaults"): a callback given an ``L0Config`` and no phase arguments
runs :func:`lightning_prune.recipes.l0`'s phases for the run's length, in Lightning and in the HF Trainer; any phase
argument, ``schedule="manual"`` or another method keeps the manual defaults; a run of unknown length says so."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from conftest import tiny_causal_lm, with_lora
from lightning.pytorch.callbacks import Callback
from lightning_helpers import LitLM, hf_token_rows, hf_training_args, lit_llama, loader, trainer

import lightning_prune as lp
from lightning_prune import recipes
from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

STEPS = 20  # a short run: dense 10%, target warm-up 30%, masks frozen at 50%


def _quiet(config: lp.PruningConfig, **kwargs) -> lp.PruningCallback:
    return lp.PruningCallback(config, plot=False, log_stats=False, prog_bar=False, **kwargs)


def test_phase_steps_match_the_recipe_for_short_and_long_runs():
    assert recipes.phase_steps(STEPS) == (2, 6, 10)
    assert recipes.phase_steps(300) == (90, 15, 120)  # 200+ steps: dense 30%, warm-up 5%, freeze 40%
    config, phases = recipes.l0(0.5, 300)
    assert (phases["dense_steps"], config.warmup_steps, phases["freeze_after_steps"]) == recipes.phase_steps(300)
    with pytest.raises(lp.PruningConfigError, match="max_steps"):
        recipes.phase_steps(3)


@pytest.mark.parametrize(
    "target, expected",
    [(None, (90, 15, 120)), (0.3, (90, 15, 120)), (0.5, (90, 15, 120)), (0.7, (90, 30, 135)), (0.9, (90, 45, 150))],
)
def test_long_runs_warm_high_targets_up_for_longer(target, expected):
    """Above 50% the gates must travel further: 5% warm-up at 50%, 15% at 90% (the freeze moves with it); at 90% a
    5% warm-up left them far behind and the freeze's cut closed every head (issue #18, session 8)."""
    assert recipes.phase_steps(300, target_sparsity=target) == expected
    assert recipes.phase_steps(STEPS, target_sparsity=target) == (2, 6, 10)  # short runs already warm up over 30%
    if target is not None:
        config, phases = recipes.l0(target, 300)
        assert (phases["dense_steps"], config.warmup_steps, phases["freeze_after_steps"]) == expected


def test_the_callbacks_auto_schedule_follows_the_target():
    callback = _quiet(lp.L0Config(target_sparsity=0.9, structures=("heads", "ffn")))
    callback.driver.resolve_schedule(300)
    assert (callback.dense_steps, callback.config.warmup_steps, callback.freeze_after_steps) == (90, 45, 150)


def test_lightning_default_callback_runs_the_recipe_and_leaves_the_users_config_alone(caplog):
    user_config = lp.L0Config(target_sparsity=0.4, structures=("heads", "ffn"))
    assert (user_config.gate_lr, user_config.lagrangian_lr) == (0.5, 0.5)  # L0's defaults are the recipe's rates
    callback = _quiet(user_config)
    phases = []

    class Record(Callback):
        def on_train_batch_start(self, trainer_, pl_module, batch, batch_idx):
            phases.append(callback.phase)

    with caplog.at_level(logging.INFO):
        trainer(STEPS, [callback, Record()]).fit(lit_llama(), loader())
    dense, warmup, freeze = recipes.phase_steps(STEPS)
    assert (callback.dense_steps, callback.freeze_after_steps, callback.reset_optimizer_at_freeze) == (
        dense,
        freeze,
        True,
    )
    assert callback.pruner.config.warmup_steps == warmup and user_config.warmup_steps == 0
    assert phases == ["dense"] * dense + ["prune"] * (freeze - dense) + ["frozen"] * (STEPS - freeze)
    assert callback.pruner.stats()["exact_sparsity"] >= 0.4
    assert any("schedule 'auto'" in r.getMessage() for r in caplog.records)
    assert callback.state_dict()["dense_steps"] == dense  # a resume compares the resolved phases


@pytest.mark.parametrize(
    "kwargs",
    [dict(dense_steps=0), dict(freeze_after_steps=15), dict(reset_optimizer_at_freeze=False), dict(schedule="manual")],
)
def test_any_phase_argument_or_manual_keeps_the_manual_defaults(kwargs):
    callback = _quiet(lp.L0Config(target_sparsity=0.4), **kwargs)
    trainer(4, [callback]).fit(lit_llama(), loader())
    assert callback.dense_steps == 0
    assert callback.freeze_after_steps == kwargs.get("freeze_after_steps")
    assert callback.reset_optimizer_at_freeze is False
    assert callback.pruner.config.warmup_steps == 0


def test_other_methods_keep_the_manual_defaults():
    callback = _quiet(lp.STEConfig(target_sparsity=0.4))
    trainer(4, [callback]).fit(lit_llama(), loader())
    assert (callback.dense_steps, callback.freeze_after_steps) == (0, None)


def test_unknown_run_length_prunes_from_the_start_and_says_so(caplog):
    class Stream(torch.utils.data.IterableDataset):  # no length: Lightning cannot count the steps of an epoch
        def __iter__(self):
            for ids in loader().dataset.tensors[0].split(4):
                yield (ids,)

    callback = _quiet(lp.L0Config(target_sparsity=0.4))
    stream = torch.utils.data.DataLoader(Stream(), batch_size=None)
    with caplog.at_level(logging.INFO):
        trainer(-1, [callback], max_epochs=1).fit(lit_llama(), stream)
    assert (callback.dense_steps, callback.freeze_after_steps) == (0, None)
    assert any("needs the run's length" in r.getMessage() for r in caplog.records)


def test_bad_schedule_value_is_refused_with_the_choices():
    with pytest.raises(lp.PruningConfigError, match=r"`schedule` must be one of \('auto', 'manual'\)"):
        lp.PruningCallback(lp.L0Config(), schedule="recipe")
    with pytest.raises(lp.PruningConfigError, match="schedule"):
        PruningTrainerCallback(lp.L0Config(), schedule=None)


@pytest.mark.parametrize("by", ["max_steps", "epochs"])
def test_hf_trainer_default_callback_runs_the_recipe(tmp_path, by):
    transformers.set_seed(0)
    model = tiny_causal_lm("llama").train()
    callback = PruningTrainerCallback(lp.L0Config(target_sparsity=0.4), plot=False)
    data = hf_token_rows()  # 16 rows, batch 4: 4 steps per epoch
    length = dict(max_steps=STEPS) if by == "max_steps" else dict(num_train_epochs=STEPS // 4)
    args = hf_training_args(tmp_path, **length)
    hf = PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    dense, warmup, freeze = recipes.phase_steps(STEPS)
    assert (callback.dense_steps, callback.freeze_after_steps, callback.reset_optimizer_at_freeze) == (
        dense,
        freeze,
        True,
    )
    assert hf.pruner.config.warmup_steps == warmup
    hf.train()
    assert callback.phase == "frozen"
    assert hf.pruner.stats()["exact_sparsity"] >= 0.4


def test_gradual_default_callback_runs_its_own_schedule():
    from lightning_prune.phases import GRADUAL_SCHEDULE

    callback = _quiet(lp.GradualConfig(target_sparsity=0.4, structures=("heads", "ffn")))
    trainer(STEPS, [callback]).fit(lit_llama(), loader())
    dense, warmup, freeze = recipes.phase_steps(STEPS, GRADUAL_SCHEDULE)
    assert (callback.dense_steps, callback.freeze_after_steps, callback.reset_optimizer_at_freeze) == (
        dense,
        freeze,
        True,
    )
    assert callback.pruner.config.warmup_steps == warmup and callback.phase == "frozen"
    assert 0.4 <= callback.pruner.stats()["exact_sparsity"] <= 0.45  # exact at every step, so at the end too


def test_gradual_on_peft_lora_runs_the_adapter_schedule(caplog):
    """LoRA on frozen weights: the whole target at the first pruning step, masks frozen two steps later, no reset
    (``phases.GRADUAL_ADAPTER_SCHEDULE``, measured on SmolLM2 + LoRA); the same config on the plain model keeps the
    full fine-tuning schedule."""
    from lightning_prune.phases import GRADUAL_ADAPTER_SCHEDULE, GRADUAL_SCHEDULE

    config = lp.GradualConfig(target_sparsity=0.4, structures=("heads", "ffn"))
    lora = LitLM(with_lora(tiny_causal_lm("llama").train()))
    callback = _quiet(config)
    with caplog.at_level(logging.INFO, logger="lightning_prune"):
        trainer(STEPS, [callback]).fit(lora, loader())
    dense, warmup, freeze = recipes.phase_steps(STEPS, GRADUAL_ADAPTER_SCHEDULE)
    assert (dense, warmup, freeze) == (2, 0, 4)
    assert (callback.dense_steps, callback.freeze_after_steps, callback.reset_optimizer_at_freeze) == (
        dense,
        freeze,
        False,
    )
    assert callback.pruner.config.warmup_steps == warmup and callback.phase == "frozen"
    assert "peft adapters" in caplog.text and "fresh optimizer state" not in caplog.text
    assert 0.4 <= callback.pruner.stats()["exact_sparsity"] <= 0.45

    plain = _quiet(config)
    trainer(STEPS, [plain]).fit(lit_llama(), loader())
    assert (plain.dense_steps, plain.freeze_after_steps) == recipes.phase_steps(STEPS, GRADUAL_SCHEDULE)[::2]
    assert plain.reset_optimizer_at_freeze


def test_hf_trainer_gradual_on_peft_lora_runs_the_adapter_schedule(tmp_path):
    from lightning_prune.phases import GRADUAL_ADAPTER_SCHEDULE

    model = with_lora(tiny_causal_lm("llama").train())
    callback = PruningTrainerCallback(lp.GradualConfig(target_sparsity=0.4, structures=("heads", "ffn")), plot=False)
    hf = PruningTrainer(
        model=model,
        args=hf_training_args(tmp_path, max_steps=STEPS),
        train_dataset=hf_token_rows(),
        callbacks=[callback],
    )
    dense, warmup, freeze = recipes.phase_steps(STEPS, GRADUAL_ADAPTER_SCHEDULE)
    assert (callback.dense_steps, callback.freeze_after_steps, callback.reset_optimizer_at_freeze) == (
        dense,
        freeze,
        False,
    )
    assert hf.pruner.config.warmup_steps == warmup


def test_a_manual_schedule_never_sizes_the_run(tmp_path, monkeypatch):
    """Sizing a run may build the training dataloader: only a pending ``schedule="auto"`` asks for it."""

    def refuse(self):
        raise AssertionError("the run was sized for a manual schedule")

    monkeypatch.setattr(PruningTrainer, "_known_total_steps", refuse)
    callback = PruningTrainerCallback(lp.L0Config(target_sparsity=0.4), dense_steps=1, plot=False)
    args = hf_training_args(tmp_path, num_train_epochs=1)
    hf = PruningTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=hf_token_rows(), callbacks=[callback])
    assert callback.driver.awaits_run_length is False and hf.pruner is not None
