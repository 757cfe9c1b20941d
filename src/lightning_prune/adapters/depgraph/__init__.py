"""Plain ``nn.Module`` s through torch-pruning's dependency graph: see
:mod:`lightning_prune.adapters.depgraph.adapter`."""

from lightning_prune.adapters.depgraph.adapter import (
    HISTORY_ATTRIBUTE,
    STRUCTURE,
    DependencyGraphAdapter,
    build_graph,
    channel_groups,
    prune_by_groups,
    with_versions,
)

__all__ = [
    "HISTORY_ATTRIBUTE",
    "STRUCTURE",
    "DependencyGraphAdapter",
    "build_graph",
    "channel_groups",
    "prune_by_groups",
    "with_versions",
]
