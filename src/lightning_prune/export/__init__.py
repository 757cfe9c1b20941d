"""Export: merge LoRA, fold gates, remove pruned structure, check equivalence, save and load."""

from lightning_prune.export.io import load_compact, save_compact
from lightning_prune.export.report import ExportReport, export_report

__all__ = ["load_compact", "save_compact", "ExportReport", "export_report"]
