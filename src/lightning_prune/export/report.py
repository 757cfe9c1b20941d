"""What an export did: sizes before and after, kept units, and the equivalence check's result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

REPORT_FILENAME = "lightning_prune_report.json"
#: Attribute of a compact model that holds its own :class:`ExportReport` (set by ``Pruner.export`` and
#: ``load_compact``), so that a saved report always describes the model saved with it.
REPORT_ATTRIBUTE = "lightning_prune_report"


def export_report(model: nn.Module) -> ExportReport | None:
    """The :class:`ExportReport` of a compact model (``Pruner.export``, ``load_compact``, the callbacks' exports):
    what was removed, the sizes, and the equivalence check's result. ``None`` for a model that did not come from an
    export.

    Example::

        compact = pruner.export()
        report = lightning_prune.export_report(compact)   # report.params_after, report.max_abs_diff, ...
    """
    return getattr(model, REPORT_ATTRIBUTE, None)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class ExportReport:
    adapter: str
    method: str
    structures: list[str]
    target_sparsity: float
    exact_sparsity: float
    params_before: int
    params_after: int
    flops_per_token_before: float
    flops_per_token_after: float
    kept_units: dict[str, list[int]] = field(default_factory=dict)
    layer_shapes: list[dict[str, int]] = field(default_factory=list)
    uniform: bool = False
    max_abs_diff: float | None = None
    reference_scale: float | None = None
    #: Causal LMs: largest logit difference of greedy decoding with the compact model's KV cache vs the gated model.
    generation_max_abs_diff: float | None = None
    #: The precision the check passed in: the model's dtype, or "float64" where fp32 rounding exceeded the tolerance.
    check_dtype: str | None = None

    def summary(self) -> str:
        check = (
            f"max |gated - compact| = {self.max_abs_diff:.2e} (scale {self.reference_scale:.2e})"
            if self.max_abs_diff is not None
            else "equivalence not checked"
        )
        if self.generation_max_abs_diff is not None:
            check += f", cached generation max |diff| = {self.generation_max_abs_diff:.2e}"
        if self.check_dtype == "float64":
            check += " (checked in float64: fp32 rounding exceeded the tolerance)"
        return (
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%}), FLOPs/token "
            f"{self.flops_per_token_after / max(self.flops_per_token_before, 1):.1%} of dense, "
            f"prunable sparsity {self.exact_sparsity:.3f} (target {self.target_sparsity:.3f}), "
            f"{'uniform' if self.uniform else 'per-layer'} shapes, {check}"
        )

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> ExportReport:
        return cls(**json.loads(Path(path).read_text()))
