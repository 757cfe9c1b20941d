"""The ``dependency_graph`` adapter under its former module name: an alias of :mod:`lightning_prune.adapters.depgraph`
(every name this module defined before the family folders stays importable from here)."""

from __future__ import annotations

# ruff: noqa: F401
# (re-exports)
from lightning_prune.adapters.depgraph.adapter import (
    _NORMS,
    _WEIGHTED,
    HISTORY_ATTRIBUTE,
    STRUCTURE,
    DependencyGraphAdapter,
    _as_tuple,
    _channel_dim,
    _fold,
    _split,
    _subset_terms,
    _supported_group,
    _weightless_copy,
    build_graph,
    channel_groups,
    prune_by_groups,
    with_versions,
)
