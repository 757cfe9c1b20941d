"""TensorBoard and wandb (offline) loggers receive the pruning metrics and the kept-units image."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning_helpers import config, lit_llama, loader, trainer

import lightning_prune as lp


def test_tensorboard_and_wandb_receive_metrics_and_image(tmp_path, monkeypatch):
    import wandb  # dev dependencies: a missing one must fail, not skip
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    L.seed_everything(0, verbose=False)
    tb = TensorBoardLogger(tmp_path / "tb", name="run")
    wb = WandbLogger(project="lightning-prune-test", save_dir=str(tmp_path / "wandb_dir"), offline=True)
    callback = lp.PruningCallback(config(), export_dir=tmp_path / "compact", dense_steps=2)
    try:
        trainer(12, [callback], logger=[tb, wb], log_every_n_steps=2).fit(lit_llama(), loader())
        run_dir = wb.experiment.dir  # <WANDB_DIR>/wandb/offline-run-*/files
    finally:
        wandb.finish()

    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"pruning/expected_sparsity", "pruning/exact_sparsity", "pruning/lambda_1"} <= set(tags["scalars"])
    assert len(events.Scalars("pruning/expected_sparsity")) >= 4
    assert "pruning/kept_units" in tags["images"]
    assert events.Images("pruning/kept_units")[0].encoded_image_string[:4] == b"\x89PNG"

    files = Path(run_dir)
    images = list(files.glob("media/images/pruning/kept_units_*.png"))
    assert images and images[0].read_bytes()[:4] == b"\x89PNG"
    run_file = next(files.parent.glob("run-*.wandb"))
    deadline = time.monotonic() + 60  # wandb's service process may still be flushing on a loaded machine
    while b"pruning/kept/ffn" not in (data := run_file.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"pruning/expected_sparsity" in data and b"pruning/kept/ffn" in data
