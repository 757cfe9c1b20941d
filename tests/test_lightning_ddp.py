"""DDP on 2 CPU processes (gloo): the gates stay identical on both ranks, and only rank 0 exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("lightning_ddp_worker.py")


def test_ddp_two_cpu_processes_keep_gates_in_sync_and_rank0_exports(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)], capture_output=True, text=True, timeout=400, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gates = [torch.load(tmp_path / f"gates_rank{r}.pt") for r in (0, 1)]
    assert set(gates[0]) == set(gates[1])
    for key in gates[0]:
        assert torch.equal(gates[0][key], gates[1][key]), key
    assert float((gates[0]["gates.ffn.log_alpha"] - 1.0).abs().max()) > 0.1  # they trained (init is 1.0 ± 0.01)
    calls = [json.loads((tmp_path / f"exports_rank{r}.json").read_text())["save_compact_calls"] for r in (0, 1)]
    assert calls == [1, 0]
    assert (tmp_path / "compact" / "config.json").exists() and (tmp_path / "compact" / "kept_units.png").exists()
