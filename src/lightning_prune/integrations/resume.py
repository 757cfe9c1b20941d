"""Resuming a pruning run: the record a checkpoint carries and the check that refuses one from another config.

Shared by :class:`~lightning_prune.PruningCallback` (the record lives in the callback's state in the Lightning
checkpoint) and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainer` (a ``lightning_prune_state.json``
next to the Trainer's checkpoint files, :func:`write_resume_record` / :func:`read_resume_record`) through their
:class:`~lightning_prune.integrations.driver.TrainingDriver`, so both refuse the same checkpoints with the same
message. Kept free of Lightning and of ``transformers``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_prune.methods.base import PruningConfig

#: The file a Hugging Face Trainer checkpoint directory gets from :class:`PruningTrainer`.
RESUME_STATE_FILENAME = "lightning_prune_state.json"


def config_fingerprint(config: PruningConfig, gate_shapes: Mapping[str, list[int]]) -> str:
    """A short hash of the pruning config and the gate shapes; a resumed checkpoint must have the same one."""
    payload = json.dumps({"config": config.to_dict(), "gates": dict(gate_shapes)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def gate_shapes(pruner: Any) -> dict[str, list[int]]:
    """``{structure: [rows, units]}`` of the pruner's gates."""
    return {name: [spec.rows, spec.units] for name, spec in pruner.specs.items()}


def run_record(config: PruningConfig, shapes: Mapping[str, list[int]]) -> dict[str, Any]:
    """What a checkpoint stores to be checked on resume: the config, the gate shapes and their fingerprint."""
    return {
        "config": config.to_dict(),
        "gate_shapes": dict(shapes),
        "config_fingerprint": config_fingerprint(config, shapes),
    }


def config_mismatch(
    saved: Mapping[str, Any], config: PruningConfig, shapes: Mapping[str, list[int]], fresh_start: str
) -> str | None:
    """Why a checkpoint whose record is ``saved`` cannot resume with ``config`` (``None`` when it can).

    Args:
        saved: the record of :func:`run_record` read back from the checkpoint (a record without a fingerprint, from
            an older version, is accepted).
        config: the config of the run that resumes.
        shapes: its gate shapes.
        fresh_start: how to start a new run instead, in the caller's words (e.g. "without `ckpt_path`").
    """
    if "config_fingerprint" not in saved or saved["config_fingerprint"] == config_fingerprint(config, shapes):
        return None
    old = saved.get("config", {})
    new = config.to_dict()
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    stored_shapes = saved.get("gate_shapes")
    gate_diff = {} if stored_shapes == dict(shapes) else {"gate_shapes": (stored_shapes, dict(shapes))}
    return (
        "The checkpoint was written with a different pruning config; resuming would mix two runs. "
        f"Differences (checkpoint, now): {diff | gate_diff}. Resume with the checkpoint's config, or start a new run "
        f"{fresh_start}."
    )


def write_resume_record(checkpoint_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` as :data:`RESUME_STATE_FILENAME` into a Hugging Face Trainer checkpoint directory."""
    Path(checkpoint_dir, RESUME_STATE_FILENAME).write_text(json.dumps(record, indent=2, default=str))


def read_resume_record(checkpoint_dir: str | Path) -> tuple[dict[str, Any] | None, list[str] | None]:
    """``(record, None)`` from a Trainer checkpoint directory that has :data:`RESUME_STATE_FILENAME`, else
    ``(None, names of its full-model weights)``; the names are ``None`` without a full-model weights file (e.g. a
    peft adapter-only checkpoint)."""
    directory = Path(checkpoint_dir)
    record_file = directory / RESUME_STATE_FILENAME
    if record_file.is_file():
        return json.loads(record_file.read_text()), None
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return None, list(json.loads(index.read_text()).get("weight_map", {}))
    single = directory / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return None, list(f.keys())
    return None, None
