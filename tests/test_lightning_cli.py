"""The ``lightning-prune`` command: ``fit`` from the example YAML writes an export; ``export`` rebuilds the
model, restores the checkpoint and writes the same compact model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lightning_prune as lp
from lightning_prune.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_llama_prune.yaml"


def tiny_yaml(tmp_path: Path, max_steps: int = 30) -> Path:
    """The example config with every output under ``tmp_path`` and fewer steps."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    trainer = cfg["trainer"]
    trainer["max_steps"] = max_steps
    trainer["default_root_dir"] = str(tmp_path)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path)
    for callback in trainer["callbacks"]:
        args = callback["init_args"]
        if "dirpath" in args:
            args["dirpath"] = str(tmp_path / "checkpoints")
        if "export_dir" in args:
            args["export_dir"] = str(tmp_path / "compact")
            args["config"]["init_args"]["warmup_steps"] = 10
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_fit_then_export_from_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])  # pytest's own arguments are not the CLI's
    cfg = tiny_yaml(tmp_path)
    main(["fit", "--config", str(cfg)])
    report = lp.ExportReport.from_json(tmp_path / "compact" / "lightning_prune_report.json")
    assert report.params_after < report.params_before and (tmp_path / "compact" / "kept_units.png").exists()
    assert (tmp_path / "logs").is_dir()  # the CSV logger from the YAML

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    out = tmp_path / "from_ckpt"
    main(["export", "--config", str(cfg), "--ckpt_path", str(ckpt), "--export_dir", str(out)])
    again = lp.ExportReport.from_json(out / "lightning_prune_report.json")
    assert again.kept_units == report.kept_units and again.params_after == report.params_after
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = lp.load_compact(tmp_path / "compact").eval()(input_ids=ids).logits
        b = lp.load_compact(out).eval()(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)

    with pytest.raises(lp.PruningConfigError, match="overwrite"):  # the target exists now
        main(["export", "--config", str(cfg), "--ckpt_path", str(ckpt), "--export_dir", str(out)])


def test_console_command_lists_the_export_subcommand():
    result = subprocess.run(
        [sys.executable, "-c", "from lightning_prune.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "export" in result.stdout and "fit" in result.stdout


def test_llama_lora_example_runs_and_exports(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("llama_lora_prune", EXAMPLE.with_name("llama_lora_prune.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--steps", "40", "--output", str(tmp_path)])
    report = lp.ExportReport.from_json(out / "lightning_prune_report.json")
    assert report.params_after < report.params_before and report.max_abs_diff is not None
    assert not any(".lora_" in key for key in lp.load_compact(out).state_dict())  # LoRA merged away
