"""FSDP2 on 2 CPU processes (gloo): plain PyTorch with ``shard_`` and Lightning's ``ModelParallelStrategy``.

The gates and multipliers stay replicated and identical on both ranks, equal a single process on the whole global
batch, the masks really act on the sharded model, the export from a full state dict computes what the gated model
computed, and a run resumed from a checkpoint mid-pruning continues exactly. FSDP1 (``FSDPStrategy``) needs CUDA
and is refused by the callback.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_gloo_processes

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _run_worker(mode: str, out: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)

    def empty_output() -> None:  # the killed run may have written part of its export, which the check then refuses
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    result = run_gloo_processes([sys.executable, str(WORKER), mode, str(out)], env, empty_output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_fsdp2_plain_pytorch_two_cpu_processes(tmp_path):
    import fsdp_worker as w

    _run_worker("plain", tmp_path)
    history = [torch.load(tmp_path / f"gates_rank{r}.pt") for r in (0, 1)]
    torch.manual_seed(0)
    model, pruner = w.build()  # one process, the whole global batch, the seeds shard_ derives
    reference = {}
    w.train(model, pruner, range(w.STEPS), record=lambda s: reference.__setitem__(s, w.gates(pruner)))
    for step in range(w.STEPS):
        for key, value in reference[step].items():
            assert torch.equal(history[0][step][key], history[1][step][key]), (step, key)  # identical ranks
            torch.testing.assert_close(history[0][step][key], value, rtol=1e-5, atol=1e-6, msg=f"{step} {key}")
    moved = (history[0][w.STEPS - 1]["gates.ffn.log_alpha"] - history[0][0]["gates.ffn.log_alpha"]).abs().max()
    assert float(moved) > 1e-4  # the gates trained

    logits = torch.load(tmp_path / "logits.pt")
    assert float((logits["gated"] - logits["dense"]).abs().max()) > 1e-2  # the masks act on the sharded model
    torch.testing.assert_close(logits["compact"], logits["gated"], rtol=1e-4, atol=1e-4)
    assert (tmp_path / "compact" / "config.json").exists()

    resumed = [torch.load(tmp_path / f"resumed_rank{r}.pt") for r in (0, 1)]
    for key, value in history[0][w.STEPS - 1].items():
        assert torch.equal(resumed[0][key], resumed[1][key]), key
        torch.testing.assert_close(resumed[0][key], value, rtol=0, atol=1e-6, msg=key)


def test_fsdp2_lightning_model_parallel_strategy_resumes_and_exports(tmp_path):
    _run_worker("lightning", tmp_path)
    fitted = [torch.load(tmp_path / f"lightning_rank{r}.pt") for r in (0, 1)]
    resumed = [torch.load(tmp_path / f"lightning_resumed_rank{r}.pt") for r in (0, 1)]
    for key in fitted[0]:
        assert torch.equal(fitted[0][key], fitted[1][key]), key
        assert torch.equal(resumed[0][key], resumed[1][key]), key
        torch.testing.assert_close(resumed[0][key], fitted[0][key], rtol=0, atol=1e-6, msg=key)
    assert float((fitted[0]["gates.ffn.log_alpha"] - 1.0).abs().max()) > 0.1  # they trained (init 1.0 ± 0.01)
    assert (tmp_path / "compact" / "config.json").exists() and (tmp_path / "compact" / "kept_units.png").exists()


def test_callback_refuses_fsdp1_strategy():
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_prune.integrations.lightning import _check_strategy

    with pytest.raises(PruningConfigError, match="FSDPStrategy.*ModelParallelStrategy.*shard_"):
        _check_strategy(SimpleNamespace(strategy=FSDPStrategy()))


def test_callback_refuses_model_parallel_without_shard(llama):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_prune.integrations.lightning import _check_sharded

    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.3))
    trainer = SimpleNamespace(strategy=ModelParallelStrategy(), world_size=2)
    with pytest.raises(PruningConfigError, match="`shard_` was not called.*configure_model"):
        _check_sharded(trainer, pruner)


def test_shard_needs_a_process_group(llama):
    from lightning_prune.integrations.fsdp import find_pruner, shard_

    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.3))
    assert find_pruner(llama) is pruner
    with pytest.raises(PruningConfigError, match="init_process_group"):
        shard_(llama)
