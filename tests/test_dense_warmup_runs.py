"""A run that cannot reach (or never reached) the pruning phase (issue #17).

Before: ``max_steps`` < ``dense_steps`` warned, then the export compared masks taken in the dense phase with
masks taken in the frozen phase, raised ``ExportMismatchError`` ("a bug in the adapter") and lost the run.
Now a schedule known to end inside the warm-up is announced before the first step (not refused: training in
chunks and resuming with a larger ``max_steps`` is legitimate), and a run that ends there, by its schedule or
by early stopping, exports the dense model it trained, checked like any export.
"""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
import transformers
from conftest import tiny_causal_lm
from lightning_helpers import config, lit_llama, loader, trainer
from test_hf_trainer import CONVERGING, MotifTokens, training_args

import lightning_prune as lp
from lightning_prune.export.report import count_parameters
from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback


class StopAt(L.Callback):
    """Ends the fit at a global step, as early stopping or a time limit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_lightning_warns_at_start_and_exports_the_dense_model(tmp_path):
    callback = lp.PruningCallback(config(), export_dir=tmp_path / "out", dense_steps=10, plot=False)
    with pytest.warns(UserWarning) as record:
        trainer(3, [callback]).fit(lit_llama(), loader())
    messages = [str(w.message) for w in record]
    start = [m for m in messages if "ends before pruning starts" in m]
    assert start and "`max_steps`=3 <= `dense_steps`=10" in start[0] and "Lower `dense_steps`" in start[0]
    report = callback.pruner.last_report
    assert report.params_after == report.params_before and report.max_abs_diff <= 1e-4 * report.reference_scale
    assert (tmp_path / "out" / "config.json").exists()


def test_lightning_epochs_inside_the_warmup_warn_too():
    callback = lp.PruningCallback(config(), dense_steps=10, plot=False)
    fit = trainer(-1, [callback], max_epochs=2)  # 16 samples / batch 4 = 4 steps an epoch: 8 steps
    with pytest.warns(UserWarning, match="`max_steps`=8 <= `dense_steps`=10"):
        fit.fit(lit_llama(), loader())


def test_a_run_reaching_the_pruning_phase_does_not_warn(recwarn):
    trainer(12, [lp.PruningCallback(config(), dense_steps=10, plot=False)]).fit(lit_llama(), loader())
    assert not [w for w in recwarn if "pruning starts" in str(w.message) or "dense phase" in str(w.message)]


def test_a_run_stopped_inside_the_warmup_exports_the_dense_model(tmp_path):
    callback = lp.PruningCallback(config(), export_dir=tmp_path / "out", dense_steps=10, plot=False)
    module = lit_llama()
    dense_params = count_parameters(tiny_causal_lm("llama"))
    with pytest.warns(UserWarning, match="ended in the dense phase.*export is the dense model"):
        trainer(50, [callback, StopAt(3)]).fit(module, loader())
    report = callback.pruner.last_report
    assert report.params_after == report.params_before and report.exact_sparsity == 0.0
    assert report.max_abs_diff <= 1e-4 * report.reference_scale and report.generation_max_abs_diff is not None
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert count_parameters(reloaded) == dense_params
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    callback.pruner.hf_model.eval()
    with torch.no_grad():
        expected = callback.pruner.hf_model(input_ids=ids).logits  # the dense phase: no masks
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)


def test_plain_api_export_in_the_dense_phase_is_the_dense_model(caplog):
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn", "hidden")))
    pruner.set_phase("dense")
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        compact = pruner.export()
    assert "Exporting the dense model" in caplog.text
    assert count_parameters(compact) == pruner.last_report.params_before
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(compact(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("max_steps", [4, 10])
def test_hf_trainer_warns_and_exports_the_dense_model(tmp_path, caplog, max_steps):
    """Also when the run ends exactly at ``dense_steps`` (it used to enter the prune phase at the end and export masks
    of gates that never trained)."""
    model = tiny_causal_lm("llama").train()
    callback = PruningTrainerCallback(lp.L0Config(**CONVERGING), export_dir=tmp_path / "compact", dense_steps=10)
    hf = PruningTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=max_steps),
        train_dataset=MotifTokens(),
        callbacks=[callback],
    )
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        hf.train()
    assert f"`max_steps`={max_steps} <= `dense_steps`=10" in caplog.text
    assert "ended in the dense phase" in caplog.text and callback.phase == "dense"
    report = callback.pruner.last_report
    assert report.params_after == report.params_before and report.max_abs_diff <= 1e-4 * report.reference_scale
