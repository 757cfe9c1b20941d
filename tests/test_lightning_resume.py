"""Resuming a pruning run from a checkpoint continues it exactly; a checkpoint of another config is refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning_helpers import config, lit_llama, loader, trainer

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.integrations.optim import GATE_GROUP

TOTAL, STOP = 24, 12  # 4 batches per epoch: the interruption falls mid-pruning, between two epochs
PHASES = dict(dense_steps=4, freeze_after_steps=20)


def run(max_steps: int, ckpt_path=None, save_to=None, **config_overrides):
    """A seeded run; with ``save_to``, ModelCheckpoint writes ``save_to/step=<max_steps>.ckpt`` at the last step."""
    L.seed_everything(0, verbose=False)
    module = lit_llama(scheduler=True)
    callback = lp.PruningCallback(config(warmup_steps=8, **config_overrides), log_stats=False, **PHASES)
    callbacks = [callback]
    if save_to is not None:  # the ordinary way to get a resumable checkpoint (trainer.save_checkpoint after a
        # max_steps stop would make Lightning replay one batch on resume, which no pruning state can undo)
        every = L.pytorch.callbacks.ModelCheckpoint(save_to, "{step}", every_n_train_steps=max_steps, save_top_k=-1)
        callbacks.append(every)
    fit = trainer(max_steps, callbacks, enable_checkpointing=save_to is not None)
    fit.fit(module, loader(), ckpt_path=ckpt_path)
    return fit, callback


def test_resume_mid_pruning_equals_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / f"step={STOP}.ckpt"
    _, first = run(STOP, save_to=tmp_path)
    assert first.phase == "prune" and first.pruner.pruning_step == STOP - PHASES["dense_steps"]
    resumed_trainer, resumed = run(TOTAL, ckpt_path=ckpt)
    straight_trainer, straight = run(TOTAL)

    assert resumed_trainer.global_step == straight_trainer.global_step == TOTAL
    for key, value in straight.pruner.state.state_dict().items():
        assert torch.equal(resumed.pruner.state.state_dict()[key], value), key
    masks_a, masks_b = resumed.pruner.deterministic_masks(), straight.pruner.deterministic_masks()
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_b)
    assert resumed.phase == straight.phase == "frozen"
    # the restored optimizer state belongs to our groups, and kept counting
    optimizer = resumed_trainer.optimizers[0]
    gate_group = next(g for g in optimizer.param_groups if g.get("name") == GATE_GROUP)
    assert all(float(optimizer.state[p]["step"]) == TOTAL for p in gate_group["params"])


def test_sample_seed_makes_gate_samples_reproducible_and_leaves_global_rng_alone():
    module = lit_llama()
    pruner = lp.PruningCallback(config()).attach(module)
    pruner.sample_seed = 1234
    state = torch.random.get_rng_state()
    first = pruner._sample_masks()
    assert torch.equal(torch.random.get_rng_state(), state)
    second = pruner._sample_masks()
    assert all(torch.equal(first[k], second[k]) for k in first)
    pruner.sample_seed = 1235
    assert any(not torch.equal(first[k], v) for k, v in pruner._sample_masks().items())


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(structures=("ffn",)), r"(?s)different pruning config.*structures"),
        (dict(target_sparsity=0.3), r"(?s)different pruning config.*target_sparsity.*\(0\.4, 0\.3\)"),
    ],
)
def test_checkpoint_from_another_config_is_refused_before_training(tmp_path, overrides, match):
    run(2, save_to=tmp_path)
    ckpt = tmp_path / "step=2.ckpt"
    module = lit_llama()
    callback = lp.PruningCallback(config(**overrides), log_stats=False)
    fit = trainer(6, [callback])
    with pytest.raises(PruningConfigError, match=match):
        fit.fit(module, loader(), ckpt_path=ckpt)
    assert fit.global_step == 0


def test_checkpoint_without_gates_is_refused_with_advice(tmp_path):
    ckpt = tmp_path / "dense.ckpt"
    dense = trainer(1, [])
    dense.fit(lit_llama(), loader())
    dense.save_checkpoint(ckpt)
    fit = trainer(3, [lp.PruningCallback(config())])
    with pytest.raises(PruningConfigError, match="load its weights into the module before"):
        fit.fit(lit_llama(), loader(), ckpt_path=ckpt)
