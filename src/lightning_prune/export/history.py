"""Compact plain-PyTorch models as *pruning history + weights*, replayed onto a model the user builds.

A compact CNN has no config file a library could rebuild it from; its shapes are the user's model minus the
removed channels. torch-pruning records every group pruning as ``(module name, out-channel?, indices)``
(Fang et al., *DepGraph*, CVPR 2023); :func:`save_pruned` writes that history next to the weights, and
:func:`load_pruned` builds a fresh dense model with the user's factory, replays the history through a new
dependency graph and loads the weights.

Example::

    compact = pruner.export()
    lightning_prune.save_pruned(compact, "compact_cnn/")
    model = lightning_prune.load_pruned("compact_cnn/", model_factory=lambda: ResNet(), example_inputs=x)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lightning_prune.contracts import example_input_tuple
from lightning_prune.errors import ExportMismatchError

__all__ = ["HISTORY_ATTRIBUTE", "HISTORY_FILENAME", "WEIGHTS_FILENAME", "load_pruned", "save_pruned"]
HISTORY_FILENAME = "pruning_history.json"
WEIGHTS_FILENAME = "model.safetensors"
#: Attribute of a compact traced model holding its pruning history (set by the dependency_graph adapter's export).
HISTORY_ATTRIBUTE = "lightning_prune_history"


def with_versions(state: dict[str, torch.Tensor], model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """``state`` carrying ``model``'s per-module state-dict versions (``_metadata``), which modules that check their
    version on load (torchvision's MNASNet) need; a dict rebuilt from tensors (safetensors, merging) has none."""
    out = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return out


def save_pruned(model: nn.Module, path: str | Path) -> Path:
    """Write a compact model's weights (safetensors) and pruning history (json) to directory ``path``.

    Raises:
        ValueError: ``model`` carries no pruning history (it was not exported by the dependency_graph adapter).
    """
    record = getattr(model, HISTORY_ATTRIBUTE, None)
    if record is None:
        raise ValueError(
            "This model carries no pruning history: save_pruned is for exports of the dependency_graph adapter. "
            "Use pruner.save_compact for transformer exports."
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILENAME))
    (path / HISTORY_FILENAME).write_text(json.dumps(record))
    return path


def load_pruned(path: str | Path, model_factory: Callable[[], nn.Module], example_inputs: Any = None) -> nn.Module:
    """Rebuild a compact model: ``model_factory()`` → replay the saved pruning history → load the weights.

    Args:
        path: a directory written by :func:`save_pruned`.
        model_factory: builds the *dense* model exactly as it was before pruning (the user's code).
        example_inputs: inputs to trace it; by default zeros of the saved shapes and dtypes.

    Raises:
        FileNotFoundError: ``path`` lacks the history or weights file.
        ExportMismatchError: the factory's model does not match the saved shapes after the replay.
    """
    import torch_pruning as tp

    path = Path(path)
    for name in (HISTORY_FILENAME, WEIGHTS_FILENAME):
        if not (path / name).exists():
            raise FileNotFoundError(f"{str(path / name)!r} is missing; is {str(path)!r} a save_pruned directory?")
    record = json.loads((path / HISTORY_FILENAME).read_text())
    if example_inputs is None:
        example_inputs = tuple(
            torch.zeros(shape, dtype=getattr(torch, dtype.split(".")[-1]))
            for shape, dtype in zip(record["inputs"], record["dtypes"])
        )
    model = model_factory()
    model.eval()
    state = load_file(str(path / WEIGHTS_FILENAME))
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input_tuple(example_inputs), verbose=False
            )
        graph.load_pruning_history([tuple(h) for h in record["history"]])
        model.load_state_dict(with_versions(state, model), strict=True)
    except (RuntimeError, AttributeError, ValueError, IndexError) as err:
        raise ExportMismatchError(
            f"The model built by `model_factory` does not take the saved weights after replaying the pruning "
            f"history ({err}). Build the same dense architecture that was pruned."
        ) from err
    setattr(model, HISTORY_ATTRIBUTE, record)
    return model
