"""The GPU suite's runner (benchmarks/gpu_suite.py) on CPU with stand-in steps: every outcome is recorded, a
failing or slow step does not stop the others, and the JSON and markdown summaries are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_suite  # noqa: E402


def test_runner_records_every_outcome_and_writes_the_summaries(tmp_path):
    py = sys.executable
    steps = [
        gpu_suite.Step("fine", "prints", [py, "-c", "print('all good')"], 30, needs_gpus=0),
        gpu_suite.Step("broken", "fails", [py, "-c", "raise SystemExit(3)"], 30, needs_gpus=0),
        gpu_suite.Step("slow", "sleeps", [py, "-c", "import time; time.sleep(30)"], 1, needs_gpus=0),
        gpu_suite.Step("multi", "needs GPUs", [py, "-c", "print(1)"], 30, needs_gpus=64),
    ]
    results = gpu_suite.main(["--output", str(tmp_path)], steps=steps)
    status = {r["name"]: r["status"] for r in results}
    assert status["fine"] == "ok" and status["broken"] == "failed (exit 3)"
    assert status["slow"] == "timed out after 1s" and status["multi"].startswith("skipped: needs 64 GPUs")
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [s["name"] for s in saved["steps"]] == ["fine", "broken", "slow", "multi"]
    assert "all good" in saved["steps"][0]["tail"]
    assert "| broken | fails | failed (exit 3) |" in (tmp_path / "gpu_suite.md").read_text()


def test_plan_names_existing_scripts_and_fits_the_lease(capsys):
    steps = gpu_suite.plan()
    for step in steps:
        scripts = [Path(part) for part in step.command if part.endswith(".py")]
        assert all(path.exists() for path in scripts), step.command
    assert sum(s.limit_s for s in steps) <= 8 * 60
    gpu_suite.main(["--dry-run"])
    assert "cuda_check" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_suite.main(["--only", "no_such_step"])


def test_the_suites_fsdp_check_runs_on_two_cpu_processes():
    """The suite's FSDP step (NCCL on 2 GPUs) is the same program as with gloo on 2 CPU processes."""
    import os

    from conftest import run_gloo_processes

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fsdp_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = run_gloo_processes([sys.executable, str(script), "--device", "cpu", "--width", "128", "--steps", "3"], env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gates identical on every rank" in run.stdout and "max |gated - compact|" in run.stdout
