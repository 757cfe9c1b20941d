"""PruningCallback in a Trainer: phases, optimizer groups, target reached, export equals the gated model, and
bad configurations failing at setup with a message that says what to do."""

from __future__ import annotations

import csv
import os
import tempfile

import lightning as L
import pytest
import torch
from lightning_helpers import LitLM, config, lit_llama, loader, trainer

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.integrations.optim import GATE_GROUP, MULTIPLIER_GROUP


def gate_values(pruner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pruner.state.state_dict().items()}


class Snapshots(L.Callback):
    """Gate/multiplier values at the start of the given global steps."""

    def __init__(self, callback: lp.PruningCallback, steps: tuple[int, ...]) -> None:
        self.callback, self.steps, self.values = callback, steps, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps and trainer.global_step not in self.values:
            self.values[trainer.global_step] = gate_values(self.callback.pruner)


def test_fit_prunes_to_target_with_phases_groups_logs_and_export(tmp_path):
    L.seed_everything(0, verbose=False)
    module = lit_llama()
    export_dir = tmp_path / "compact"
    callback = lp.PruningCallback(config(), export_dir=export_dir, dense_steps=10, freeze_after_steps=270)
    snaps = Snapshots(callback, (0, 10, 270))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="logs")
    fit = trainer(300, [callback, snaps], logger=logger, log_every_n_steps=20)
    fit.fit(module, loader())
    pruner = callback.pruner

    # every parameter in exactly one group; gates and multipliers in theirs, no weight decay
    groups = fit.optimizers[0].param_groups
    by_name = {g.get("name"): g for g in groups}
    assert set(by_name) == {None, GATE_GROUP, MULTIPLIER_GROUP}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in module.parameters()}
    assert {id(p) for p in by_name[GATE_GROUP]["params"]} == {id(p) for p in pruner.gate_parameters()}
    assert {id(p) for p in by_name[MULTIPLIER_GROUP]["params"]} == {id(p) for p in pruner.multiplier_parameters()}
    assert by_name[GATE_GROUP]["weight_decay"] == 0 and by_name[MULTIPLIER_GROUP]["weight_decay"] == 0
    assert by_name[None]["weight_decay"] == 0.01
    assert by_name[GATE_GROUP]["lr"] == 0.0  # frozen at the end: our groups stand still

    # phases: gates still during the dense warm-up and after the freeze, moved in between
    assert all(torch.equal(snaps.values[0][k], snaps.values[10][k]) for k in snaps.values[0])
    final = gate_values(pruner)
    assert all(torch.equal(snaps.values[270][k], final[k]) for k in final)
    moved = max(float((final[k] - snaps.values[10][k]).abs().max()) for k in final if "log_alpha" in k)
    assert moved > 1.0
    assert callback.phase == "frozen" and pruner.pruning_step == 260

    stats = pruner.stats()
    assert abs(stats["expected_sparsity"] - 0.4) <= 0.02, stats
    assert abs(stats["exact_sparsity"] - 0.4) <= 0.02, stats

    # export: report, plot, and a compact model computing what the gated eval model computes
    report = lp.ExportReport.from_json(export_dir / "lightning_prune_report.json")
    assert report.exact_sparsity == pytest.approx(stats["exact_sparsity"]) and report.max_abs_diff is not None
    assert (export_dir / "kept_units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compact = lp.load_compact(export_dir).eval()
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(1))
    module.model.eval()
    with torch.no_grad():
        gated, small = module.model(input_ids=ids).logits, compact(input_ids=ids).logits
    assert torch.allclose(gated, small, atol=1e-4 * float(gated.abs().max()))
    assert sum(p.numel() for p in compact.parameters()) == report.params_after < report.params_before

    # metrics reached the logger
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["pruning/expected_sparsity"]) for r in rows if r.get("pruning/expected_sparsity")]
    assert len(logged) >= 10 and {"pruning/lambda_1", "pruning/kept/heads", "pruning/phase"} <= set(rows[0])


class StepLRs(L.Callback):
    def __init__(self) -> None:
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append({g.get("name"): g["lr"] for g in optimizer.param_groups})


def test_dict_output_and_scheduler_keep_our_learning_rates():
    L.seed_everything(0, verbose=False)
    module = lit_llama(return_dict=True, scheduler=True)
    callback, seen = lp.PruningCallback(config(warmup_steps=0), log_stats=False, schedule="manual"), StepLRs()
    trainer(6, [callback, seen]).fit(module, loader())
    assert [lrs[None] for lrs in seen.lrs] == pytest.approx([1e-3 / (1 + i) for i in range(6)])  # user's schedule
    assert all(lrs[GATE_GROUP] == 0.1 and lrs[MULTIPLIER_GROUP] == 0.05 for lrs in seen.lrs)  # ours: constant
    assert float(callback.pruner.state.regularizer.constraint.lambda_1.detach()) != 0.0  # the penalty was in the loss
    assert "training_step" not in module.__dict__  # the instance-level wrapper was removed at teardown


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(config={"target_sparsity": 0.5}), "PruningConfig"),
        (dict(dense_steps=-1), "dense_steps"),
        (dict(dense_steps=10, freeze_after_steps=10), "freeze_after_steps.*global step"),
        (dict(plot="yes"), "plot"),
        (dict(seed=1.5), "seed"),
        (dict(export_dir=3), "export_dir"),
        (dict(model_attribute=""), "model_attribute"),
    ],
)
def test_constructor_validates_arguments(kwargs, match):
    kwargs = {"config": lp.L0Config(), **kwargs}
    with pytest.raises(PruningConfigError, match=match):
        lp.PruningCallback(**kwargs)


def test_non_empty_export_dir_fails_at_setup(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    fit = trainer(3, [lp.PruningCallback(config(), export_dir=tmp_path / "out")])
    with pytest.raises(PruningConfigError, match="overwrite_export=True"):
        fit.fit(lit_llama(), loader())
    assert fit.global_step == 0


def test_unwritable_export_dir_fails_at_setup(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    fit = trainer(3, [lp.PruningCallback(config(), export_dir=tmp_path / "file.txt" / "compact")])
    with pytest.raises(PruningConfigError, match="is a file"):
        fit.fit(lit_llama(), loader())
    assert fit.global_step == 0


def test_read_only_export_dir_fails_at_setup(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_tempfile = tempfile.TemporaryFile

    def probe(*args, dir=None, **kwargs):  # root may write into read-only folders: answer as a normal user's OS
        if dir is not None and str(dir) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_tempfile(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", probe)
    fit = trainer(3, [lp.PruningCallback(config(), export_dir=locked / "compact")])
    with pytest.raises(PruningConfigError, match="not writable"):
        fit.fit(lit_llama(), loader())


class NoModel(LitLM):
    def __init__(self) -> None:
        L.LightningModule.__init__(self)
        self.encoder = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)


class TwoModels(LitLM):
    def __init__(self) -> None:
        L.LightningModule.__init__(self)
        self.student = lit_llama().model
        self.teacher = lit_llama(seed=1).model


def test_module_without_findable_model_fails_at_setup():
    fit = trainer(3, [lp.PruningCallback(config())])
    with pytest.raises(UnsupportedModelError, match=r"(?s)encoder \(Linear\).*model_attribute="):
        fit.fit(NoModel(), loader())
    with pytest.raises(UnsupportedModelError, match=r"(?s)several.*student.*teacher.*model_attribute="):
        lp.PruningCallback(config()).attach(TwoModels())
    with pytest.raises(UnsupportedModelError, match="does not name a submodule"):
        lp.PruningCallback(config(), model_attribute="pupil").attach(TwoModels())
    module = TwoModels()
    pruner = lp.PruningCallback(config(), model_attribute="teacher").attach(module)
    assert pruner.model is module.teacher and not hasattr(module.student, "pruning_gates")


class Manual(LitLM):
    def __init__(self) -> None:
        super().__init__(lit_llama().model)
        self.automatic_optimization = False


def test_manual_optimization_is_refused_with_a_recipe():
    with pytest.raises(PruningConfigError, match=r"(?s)automatic optimization.*pruner.penalty\(\)"):
        trainer(3, [lp.PruningCallback(config())]).fit(Manual(), loader())
