"""Import the real ``torchvision`` (model definitions from the registry package) beside the CPU build of torch.

torchvision's model definitions are plain PyTorch modules; pruning never calls its compiled detection ops (``nms``,
``roi_align``, ...). The PyPI wheel of torchvision 0.28 (the release for torch 2.13) links those ops against the
CUDA build of torch, so beside the CPU build its ``_C.so`` does not load. torchvision is written to run without its
ops (``torchvision.extension._has_ops()`` is then ``False``), except that ``torchvision/_meta_registrations.py``
registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` without checking, and the import fails
with "operator torchvision::nms does not exist". Declaring those two schemas first (no kernels: calling them would
raise) lets the import go on; with a torchvision whose ops load, nothing is declared.

Where it lives: the test set-up installs the wheel into ``.torchvision/`` at the repository root (``pip install
--no-deps --target .torchvision torchvision``), not into the environment: installed there, it would break
``import torchmetrics`` (and so ``import lightning``) for every program that imports them before this module.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Where the test set-up installs torchvision (see the module docstring).
SIDE_DIRECTORY = Path(__file__).resolve().parents[1] / ".torchvision"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY: list[torch.library.Library] = []  # kept alive: a Library object removes its definitions when collected


def import_torchvision():
    """``import torchvision``, declaring the two op schemas its import needs when its compiled ops are missing."""
    import importlib.util
    import sys

    if importlib.util.find_spec("torchvision") is None and SIDE_DIRECTORY.is_dir():
        sys.path.append(str(SIDE_DIRECTORY))
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            f"torchvision is not installed. The test set-up (README, line 'tests') puts it in {SIDE_DIRECTORY}: "
            "`pip install --no-deps -c constraints.txt --target .torchvision torchvision` (0.28.0, the release for "
            "torch 2.13)."
        )
    if not _LIBRARY and not _ops_loadable():
        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            if not _defined(schema.split("(")[0]):
                library.define(schema)
        _LIBRARY.append(library)
    import torchvision

    return torchvision


def _defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _ops_loadable() -> bool:
    """Whether torchvision's compiled ops load here (then its own import registers everything)."""
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    library = next(iter(Path(spec.origin).parent.glob("_C*.so")), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True
