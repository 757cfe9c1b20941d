"""A failed export at the end of a Lightning run does not lose the run (issue #14: errors before work is lost).

The callback saves the trained module (gates included) beside ``export_dir`` and raises the original error with
the rescue path and the command that exports it later; ``export_checkpoint`` then exports it into a fresh module.
"""

from __future__ import annotations

import pytest
import torch
from lightning_helpers import config, lit_llama, loader, trainer

import lightning_prune as lp
from lightning_prune.errors import ExportMismatchError


def test_a_failed_export_saves_the_trained_module_and_it_exports_later(tmp_path, monkeypatch):
    out = tmp_path / "compact"
    callback = lp.PruningCallback(config(), export_dir=out, dense_steps=2, plot=False)
    module = lit_llama()

    def broken_export(self, *args, **kwargs):
        raise ExportMismatchError("simulated mismatch")

    monkeypatch.setattr(lp.Pruner, "export", broken_export)
    with pytest.raises(ExportMismatchError, match=r"simulated mismatch.*compact\.rescue\.ckpt.*export_checkpoint"):
        trainer(12, [callback]).fit(module, loader())
    rescue = tmp_path / "compact.rescue.ckpt"
    assert rescue.exists() and not out.exists()
    monkeypatch.undo()

    fresh = lit_llama(seed=5)  # other initial weights: everything must come from the rescue file
    exporter = lp.PruningCallback(config(), export_dir=out, dense_steps=2, plot=False)
    exporter.export_checkpoint(fresh, rescue)
    compact = lp.load_compact(out)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=ids).logits  # the trained gated model, deterministic masks
        assert torch.allclose(compact(input_ids=ids).logits, expected, atol=1e-5)
