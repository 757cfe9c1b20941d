"""The ``dependency_graph`` adapter under its former module name: an alias of :mod:`lightning_prune.adapters.depgraph`
(every name this module defined before the family folders stays importable from here)."""

from __future__ import annotations

# ruff: noqa: F401
# (re-exports)
from lightning_prune.adapters.depgraph import HISTORY_ATTRIBUTE, STRUCTURE, DependencyGraphAdapter, with_versions
from lightning_prune.adapters.depgraph.cost_terms import _split, _subset_terms
from lightning_prune.adapters.depgraph.graph import (
    _NORMS,
    _WEIGHTED,
    _channel_dim,
    _supported_group,
    build_graph,
    channel_groups,
    prune_by_groups,
)
from lightning_prune.adapters.depgraph.surgery import _fold, _weightless_copy
from lightning_prune.contracts import example_input_tuple as _as_tuple
