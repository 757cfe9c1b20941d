"""The plain-PyTorch API: :func:`attach` gates to a model and get a :class:`Pruner` back (see :mod:`.core`)."""

from lightning_prune.pruner.core import (
    PHASES,
    STATE_ATTRIBUTE,
    Pruner,
    PruningState,
    _binary,  # noqa: F401 (imported by tests and benchmarks/scale.py)
    attach,
)

__all__ = ["PHASES", "STATE_ATTRIBUTE", "Pruner", "PruningState", "attach"]
