"""Export orchestration: the adapter's compact model from the merged weights and the final masks, its report, the
parameter-count and equivalence checks, and writing it to a directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lightning_prune.errors import AttachStateError
from lightning_prune.export.io import DEFAULT_MAX_SHARD_SIZE
from lightning_prune.export.merge import MergedWeights
from lightning_prune.export.report import REPORT_ATTRIBUTE, ExportReport, count_parameters
from lightning_prune.export.verify import verify_export
from lightning_prune.pruner.state import STATE_ATTRIBUTE
from lightning_prune.pruner.stats import _binary, emptied_structures_warning, missed_target_warning

log = logging.getLogger("lightning_prune")


class ExportMixin:
    """The export side of :class:`~lightning_prune.pruner.Pruner`."""

    def export(self, check: bool = True) -> nn.Module:
        """A plain compact model: LoRA merged, gates folded into the weights, pruned units removed.

        The result is a fresh model of the original class (uniform shapes) or of the per-layer class, with
        no hooks, no gates and no peft wrappers. Before it is returned, its outputs are compared with the
        gated model's in eval mode on random inputs; a mismatch raises :class:`ExportMismatchError`.
        """
        self._check_attached()
        self._check_materialised()
        self._check_finite_parameters()
        dense = self.phase == "dense"
        if dense:  # the gates never trained: the model the user has is the dense one, so that is what ships
            log.warning(
                "lightning-prune: export() in the dense phase (pruning never started: training ended within the "
                "dense warm-up, or set_phase('prune') was never called). Exporting the dense model, LoRA merged; "
                "train past the warm-up (e.g. more steps or a smaller `dense_steps`) to prune."
            )
            masks = {name: torch.ones(spec.rows, spec.units) for name, spec in self.specs.items()}
        else:
            masks = self.deterministic_masks()
            emptied = emptied_structures_warning(masks)
            if emptied is not None:
                log.warning(emptied)
        state = MergedWeights(self.model, skip_prefix=STATE_ATTRIBUTE)  # merged per tensor as the adapter reads it
        compact, info = self.config.build_compact(self, state, masks)
        compact.eval()  # a fresh model starts in training mode (dropout on); exports are for inference
        del state
        params_after, flops_after = self.cost.total(_binary(masks))  # scaled masks (γ · binary) count as kept
        report = ExportReport(
            adapter=self.adapter.name,
            method=self.config.method_name,
            structures=list(self.specs),
            target_sparsity=self.final_target(),
            exact_sparsity=float(self.cost.sparsity(_binary(masks), self.config.target)),
            params_before=int(self.cost.dense_params),
            params_after=int(round(float(params_after))),
            flops_per_token_before=float(self.cost.dense_flops),
            flops_per_token_after=float(flops_after),
            kept_units={name: m.sum(-1).long().tolist() for name, m in _binary(masks).items()},
            layer_shapes=info.get("layer_shapes", []),
            uniform=bool(info.get("uniform", False)),
        )
        missed = None
        if not dense:
            missed = missed_target_warning(
                report.exact_sparsity,
                report.target_sparsity,
                report.method,
                current=self.current_target(),
                match_target=bool(self.config.match_target),
            )
        if missed is not None:
            log.warning(missed)
        counted = count_parameters(compact)
        if counted != report.params_after:
            raise AttachStateError(
                f"The compact model has {counted} parameters but the cost model predicts {report.params_after}. "
                "The model probably has parameters the adapter does not know; please report it."
            )
        if check:
            previous, previous_path = self.phase, self.mask_path
            # the export folds the merged path, with the masks it exported (none in the dense phase)
            self.phase, self.mask_path = ("dense" if dense else "frozen"), "merged"
            try:
                # the model the user runs: a peft wrapper's forward is what was trained (and what the check compares)
                checked = verify_export(self.adapter, self.model, compact, self.config.export_rtol)
                report.max_abs_diff, report.reference_scale, report.generation_max_abs_diff = checked[:3]
                report.check_dtype = checked[3]
            finally:
                self.phase, self.mask_path = previous, previous_path
        self.last_report = report
        setattr(compact, REPORT_ATTRIBUTE, report)  # the report travels with its model (save_compact writes it)
        log.info("lightning-prune: %s", report.summary())
        return compact

    def save_compact(
        self,
        path: str | Path,
        overwrite: bool = False,
        compact: nn.Module | None = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    ) -> Path:
        """Export (unless ``compact`` is given) and write the compact model to ``path`` atomically, as safetensors
        files of at most ``max_shard_size`` each (``"2GB"``, ``"500MB"`` or bytes) that ``load_compact`` reads and
        verifies. The report written is the one of the model written (attached to it by :meth:`export`); a
        ``compact`` that did not come from an export is written without one."""
        from lightning_prune.export.io import check_export_dir, save_compact

        path = Path(path)
        check_export_dir(path, overwrite)  # fail before spending time on the export
        compact = compact if compact is not None else self.export()
        report = getattr(compact, REPORT_ATTRIBUTE, None)
        if report is None:
            log.warning(
                "lightning-prune: save_compact(compact=...) got a model without an export report (not from "
                "Pruner.export or load_compact); %s is written without lightning_prune_report.json.",
                path,
            )
        return save_compact(compact, path, report=report, overwrite=overwrite, max_shard_size=max_shard_size)
