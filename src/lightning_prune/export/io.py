"""Writing and reading compact models.

``save_compact`` writes into a temporary sibling directory and renames it into place only when every
file is written, so an interrupted export never leaves a directory that looks complete. A uniform export
is a standard transformers directory; a per-layer export also carries ``modeling_lightning_prune.py``.
Every export carries a manifest (sha256 of each file) and a stored probe, which ``load_compact`` checks (see
:mod:`lightning_prune.export.integrity`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import transformers
from torch import nn

from lightning_prune.errors import ExportDirectoryError, PruningConfigError
from lightning_prune.export.history import HISTORY_ATTRIBUTE, HISTORY_FILENAME, load_pruned, save_pruned
from lightning_prune.export.integrity import check_probe, verify_files, write_manifest, write_probe
from lightning_prune.export.per_layer import (
    MODEL_TYPE_PREFIX,
    MODELING_FILENAME,
    per_layer_module,
    render_modeling_source,
)
from lightning_prune.export.report import REPORT_ATTRIBUTE, REPORT_FILENAME, ExportReport, count_parameters


def export_dir_problem(path: str | Path, overwrite: bool, overwrite_hint: str = "overwrite=True") -> str | None:
    """Why ``path`` cannot receive an export (``None`` when it can); probes by writing a temporary file.

    The one check behind every export path (``Pruner.save_compact``, ``save_compact``, the callbacks' ``export_dir``
    and ``lightning-prune export``); ``overwrite_hint`` is how the caller's user turns ``overwrite`` on.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"Export directory {str(path)!r} exists and is a file; choose a directory path."
    if path.exists() and any(path.iterdir()) and not overwrite:
        return (
            f"Export directory {str(path)!r} exists and is not empty. Pass {overwrite_hint} to replace it, or "
            "choose another directory."
        )
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"Export directory {str(path)!r} cannot be created: {str(parent)!r} is a file, not a directory."
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        return f"Export directory {str(path)!r} is not writable ({err}); choose a writable directory."
    return None


def check_export_dir(path: str | Path, overwrite: bool, overwrite_hint: str = "overwrite=True") -> None:
    """Raise :class:`~lightning_prune.errors.ExportDirectoryError` before any work if ``path`` cannot receive an
    export (see :func:`export_dir_problem`)."""
    problem = export_dir_problem(path, overwrite, overwrite_hint)
    if problem is not None:
        raise ExportDirectoryError(problem)


#: Default largest safetensors file of an export: a 7B model in bf16 is 7 files, each written straight from the
#: model's tensors (safetensors >= 0.6 writes without a serialised copy in memory).
DEFAULT_MAX_SHARD_SIZE = "2GB"


def save_compact(
    model: nn.Module,
    path: str | Path,
    report: ExportReport | None = None,
    overwrite: bool = False,
    tokenizer=None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Save a compact model (safetensors + config, plus the modeling file for per-layer shapes), with the files that
    let :func:`load_compact` verify it: a stored probe (inputs and the outputs ``model`` computes on them) and a
    manifest of every file's sha256.

    Args:
        model: the compact model (``Pruner.export()``).
        path: the directory to write; it is written next to it and renamed into place when complete.
        report: the export report, written as ``lightning_prune_report.json``; by default the report
            ``Pruner.export()`` attached to ``model`` (none for a model that did not come from an export).
        overwrite: replace a non-empty ``path``.
        tokenizer: saved alongside when given (not fingerprinted).
        max_shard_size: largest weights file (``"2GB"``, ``"500MB"`` or bytes); a bigger model is written as
            ``model-0000i-of-0000n.safetensors`` with an index, which ``load_compact`` and ``from_pretrained`` read.

    Raises:
        ExportDirectoryError: ``path`` cannot receive the export.
        PruningConfigError: ``report`` describes another model (its parameter count differs from ``model``'s).
    """
    path = Path(path)
    check_export_dir(path, overwrite)
    report = report if report is not None else getattr(model, REPORT_ATTRIBUTE, None)
    if report is not None and report.params_after != count_parameters(model):
        raise PruningConfigError(
            f"The export report describes a model of {report.params_after:,} parameters, but the model to save has "
            f"{count_parameters(model):,}: it belongs to another export. Pass the report of this model (the one "
            "`Pruner.export()` attached to it), or none."
        )
    traced = getattr(model, HISTORY_ATTRIBUTE, None) is not None
    if not traced and not hasattr(model, "save_pretrained"):
        raise PruningConfigError(
            f"save_compact writes transformers models and plain PyTorch models exported by lightning-prune (which "
            f"carry their pruning history); this {type(model).__name__} is neither. Save it with "
            "`safetensors.torch.save_model`, or pass the model `Pruner.export()` returned."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        if traced:  # a CNN/MLP: weights + the pruning history that rebuilds its shapes from the user's model
            save_pruned(model, tmp)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)  # safetensors (transformers 5's only format)
        model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
        if model_type.startswith(MODEL_TYPE_PREFIX):
            (tmp / MODELING_FILENAME).write_text(render_modeling_source(model_type[len(MODEL_TYPE_PREFIX) :]))
        if report is not None:
            report.to_json(tmp / REPORT_FILENAME)
        write_probe(model, tmp)
        write_manifest(tmp)  # last: it fingerprints every file above
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_compact(
    path: str | Path, verify: bool = True, model_factory: Callable[[], nn.Module] | None = None, **kwargs
) -> nn.Module:
    """Load a compact model written by :func:`save_compact` (uniform or per-layer, or a plain PyTorch model), verified.

    Per-layer exports are built from lightning-prune's own copy of the modeling code; the file in the
    directory is only for users without lightning-prune (``trust_remote_code=True``). The export report, when the
    directory has one, is attached to the model (``Pruner.save_compact(compact=...)`` writes it again).

    Args:
        path: a directory written by :func:`save_compact`.
        verify: check the directory before loading (every file's sha256 against the manifest) and the loaded model
            after (the stored probe's outputs, within the tolerance of the loaded dtype).
        model_factory: for a plain PyTorch model (a CNN exported by the dependency_graph adapter): builds the dense
            model as it was before pruning (the user's code, e.g. ``lambda: torchvision.models.resnet18()``); the
            saved pruning history is replayed on it before the weights load. Not used for transformers models.
        kwargs: passed to ``from_pretrained`` (``dtype``, ``device_map``, ...); for a plain PyTorch model,
            ``example_inputs`` to trace the factory's model (default: zeros of the saved shapes).

    Raises:
        CorruptExportError: (``verify=True``) no manifest, a file missing, truncated or changed, a weights file the
            export did not write, or the loaded model does not compute the stored probe's outputs.
        FileNotFoundError: no ``config.json`` (with ``verify=False``).
    """
    path = Path(path)
    if verify:
        verify_files(path)
    if (path / HISTORY_FILENAME).is_file():
        if model_factory is None:
            raise PruningConfigError(
                f"{str(path)!r} holds a plain PyTorch model (weights + pruning history): pass `model_factory`, a "
                "function that builds the dense model as it was before pruning, e.g. "
                "`load_compact(path, model_factory=lambda: torchvision.models.resnet18(num_classes=10))`."
            )
        model = load_pruned(path, model_factory, example_inputs=kwargs.pop("example_inputs", None))
        if kwargs:
            raise PruningConfigError(f"load_compact of a plain PyTorch model takes no {sorted(kwargs)}.")
        if verify:
            check_probe(model, path)
        if (path / REPORT_FILENAME).is_file():
            setattr(model, REPORT_ATTRIBUTE, ExportReport.from_json(path / REPORT_FILENAME))
        return model
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; is it a directory written by save_compact?")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or []
    if not architectures:
        raise ValueError(f"{config_file} names no architecture; cannot tell which class to load.")
    if model_type.startswith(MODEL_TYPE_PREFIX):
        module = per_layer_module(model_type[len(MODEL_TYPE_PREFIX) :])
        cls = getattr(module, architectures[0])
    else:
        cls = getattr(transformers, architectures[0])
    model = cls.from_pretrained(path, **kwargs)
    if verify:
        check_probe(model, path)
    if (path / REPORT_FILENAME).is_file():
        setattr(model, REPORT_ATTRIBUTE, ExportReport.from_json(path / REPORT_FILENAME))
    return model
