"""Plain ``nn.Module`` s (CNNs, MLPs) through torch-pruning's dependency graph: the ``dependency_graph`` adapter.

The package: :mod:`.adapter` (the adapter class; its docstring describes the layout), :mod:`.graph` (tracing and
channel groups, group pruning), :mod:`.cost_terms`, :mod:`.hooks` (where the masks act), :mod:`.surgery` (the
export). Importing it registers the adapter as ``"dependency_graph"``; ``lightning_prune.adapters.dependency_graph``
is the same API under its former module name.
"""

from __future__ import annotations

from lightning_prune.adapters.depgraph.adapter import DependencyGraphAdapter
from lightning_prune.adapters.depgraph.graph import STRUCTURE, build_graph, channel_groups, prune_by_groups
from lightning_prune.adapters.registry import register_adapter
from lightning_prune.export.history import HISTORY_ATTRIBUTE, with_versions

register_adapter("dependency_graph")(DependencyGraphAdapter)

__all__ = [
    "HISTORY_ATTRIBUTE",
    "STRUCTURE",
    "DependencyGraphAdapter",
    "build_graph",
    "channel_groups",
    "prune_by_groups",
    "with_versions",
]
