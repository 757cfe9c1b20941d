"""Faults: a training process killed mid-pruning (SIGKILL, no clean-up) and resumed from its last checkpoint ends
with the masks of an uninterrupted run; an export interrupted half-way leaves no directory that looks complete and
never damages the previous export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize_gates

import lightning_prune as lp

TESTS = Path(__file__).parent
TOTAL, EVERY, KILL_AT = 24, 4, 14  # checkpoints at steps 4, 8, 12; killed at 14 (mid-pruning: steps 4..20)

# One training run; killed with SIGKILL right after optimizer step KILL_AT when asked (argv[2] == "kill").
RUN = f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
import lightning as L, torch
from lightning_helpers import config, lit_llama, loader, trainer
import lightning_prune as lp

out, mode = sys.argv[1], sys.argv[2]
ckpt = sys.argv[3] if len(sys.argv) > 3 else None

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if mode == "kill" and trainer.global_step == {KILL_AT}:
            os.kill(os.getpid(), signal.SIGKILL)

L.seed_everything(0, verbose=False)
callback = lp.PruningCallback(config(warmup_steps=8), log_stats=False, dense_steps=4, freeze_after_steps=20)
every = L.pytorch.callbacks.ModelCheckpoint(out, "{{step}}", every_n_train_steps={EVERY}, save_top_k=-1)
fit = trainer({TOTAL}, [callback, every, Kill()], enable_checkpointing=True)
fit.fit(lit_llama(scheduler=True), loader(), ckpt_path=ckpt)
torch.save(callback.pruner.deterministic_masks(), os.path.join(out, "masks.pt"))
"""


def _run(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(script), str(out), *args], capture_output=True, text=True, timeout=400, env=env
    )


def test_run_killed_mid_pruning_resumes_to_the_masks_of_an_uninterrupted_run(tmp_path):
    killed = _run(tmp_path, "killed", "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = sorted((tmp_path / "killed").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    assert [p.stem for p in checkpoints] == ["step=4", "step=8", "step=12"]
    assert not (tmp_path / "killed" / "masks.pt").exists()

    resumed = _run(tmp_path, "killed", "resume", str(checkpoints[-1]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _run(tmp_path, "straight", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    a = torch.load(tmp_path / "killed" / "masks.pt")
    b = torch.load(tmp_path / "straight" / "masks.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert any(bool((m == 0).any()) for m in b.values()), "the run should have pruned something"


class Interrupted(BaseException):
    pass


def _interrupt_after_first_file(monkeypatch):
    """Make save_pretrained write its config and then die, as a killed or out-of-disk export would."""
    import transformers

    original = transformers.PreTrainedModel.save_pretrained

    def half(self, directory, *args, **kwargs):
        self.config.save_pretrained(directory)
        raise Interrupted("killed half-way")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", half)
    return original


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, llama, monkeypatch):
    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.0, structures=("ffn",)))
    randomize_gates(pruner)
    _interrupt_after_first_file(monkeypatch)
    target = tmp_path / "compact"
    with pytest.raises(Interrupted):
        pruner.save_compact(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [], "no partial directory may be left behind"


def test_interrupted_overwrite_keeps_the_previous_export_intact(tmp_path, llama, monkeypatch):
    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.0, structures=("ffn",)))
    randomize_gates(pruner)
    target = tmp_path / "compact"
    pruner.save_compact(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    _interrupt_after_first_file(monkeypatch)
    with pytest.raises(Interrupted):
        pruner.save_compact(target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["compact"]
    monkeypatch.undo()
    reloaded = lp.load_compact(target)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, pruner.export()(input_ids=ids).logits, atol=1e-5)
