"""Plots of what pruning kept: a heatmap of kept units per layer and structure.

matplotlib is used with the non-interactive ``Agg`` backend, so plotting works on servers and in workers.

Example::

    from lightning_prune.integrations.plots import kept_units_figure, save_kept_units_plot

    report = pruner.last_report
    fig = kept_units_figure(report.kept_units, {"heads": 4, "ffn": 96})
    save_kept_units_plot(report.kept_units, {"heads": 4, "ffn": 96}, "kept_units.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)  # a no-op when a backend was already chosen by the user

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOT_FILENAME = "kept_units.png"


def kept_fraction_grid(
    kept_units: Mapping[str, Sequence[int]], units_per_row: Mapping[str, int]
) -> tuple[np.ndarray, list[str], int]:
    """The matrix drawn by :func:`kept_units_figure`: one row per structure, one column per layer.

    A structure with a single row (e.g. ``hidden``, shared by all layers) fills every column with its value.

    Returns:
        ``(fractions, structure_names, layers)`` where ``fractions[i, l]`` is the kept fraction of
        structure ``i`` in layer ``l``.
    """
    names = list(kept_units)
    layers = max((len(v) for v in kept_units.values()), default=1)
    grid = np.zeros((len(names), layers), dtype=float)
    for i, name in enumerate(names):
        counts = np.asarray(kept_units[name], dtype=float)
        total = float(units_per_row.get(name, max(counts.max(initial=0.0), 1.0)))
        row = counts / max(total, 1.0)
        grid[i] = row if len(row) == layers else np.full(layers, row.mean() if len(row) else 0.0)
    return grid, names, layers


def kept_units_figure(
    kept_units: Mapping[str, Sequence[int]],
    units_per_row: Mapping[str, int],
    title: str | None = None,
):
    """A heatmap of the fraction of units kept per layer (x) and structure (y), annotated with counts.

    Args:
        kept_units: kept units per row for each structure, as in ``ExportReport.kept_units``.
        units_per_row: the dense number of units per row of each structure (the colour scale's 100%).
        title: figure title; defaults to "Kept units per layer".

    Returns:
        A matplotlib ``Figure`` (close it with ``plt.close(fig)`` when done).
    """
    grid, names, layers = kept_fraction_grid(kept_units, units_per_row)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * layers + 2.5), max(2.4, 0.6 * len(names) + 1.6)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(layers))
    ax.set_xticklabels([str(i) for i in range(layers)])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} (/{units_per_row.get(n, '?')})" for n in names])
    ax.set_xlabel("layer")
    ax.set_title(title or "Kept units per layer", fontsize=10)
    if layers * len(names) <= 400:  # annotate only while the numbers stay readable
        for i, name in enumerate(names):
            counts = list(kept_units[name])
            for layer in range(layers):
                value = counts[layer] if len(counts) == layers else (counts[0] if counts else 0)
                colour = "white" if grid[i, layer] < 0.5 else "black"
                ax.text(layer, i, str(int(value)), ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label="kept fraction")
    fig.tight_layout()
    return fig


def save_kept_units_plot(
    kept_units: Mapping[str, Sequence[int]],
    units_per_row: Mapping[str, int],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw :func:`kept_units_figure` and write it as a PNG to ``path``; returns the path."""
    path = Path(path)
    fig = kept_units_figure(kept_units, units_per_row, title)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def pruner_kept_units(pruner: Any) -> dict[str, list[int]]:
    """Kept units per row of each structure under the pruner's deterministic masks."""
    return {name: m.sum(-1).long().tolist() for name, m in pruner.deterministic_masks().items()}


def pruner_units(pruner: Any) -> dict[str, int]:
    """Units per row of each of the pruner's structures (the colour scale's 100%)."""
    return {name: spec.units for name, spec in pruner.specs.items()}


def pruner_plot_title(pruner: Any) -> str:
    """The title of a pruner's heatmap: what it kept and the target it was given."""
    return f"Kept units per layer\n(target sparsity {pruner.config.target_sparsity} of {pruner.config.target})"


def save_pruner_plot(pruner: Any, path: str | Path) -> Path:
    """:func:`save_kept_units_plot` of what ``pruner``'s deterministic masks keep."""
    return save_kept_units_plot(pruner_kept_units(pruner), pruner_units(pruner), path, title=pruner_plot_title(pruner))
