"""Checks of the attach state: the gates still sit in the model, nothing replaced a hooked module or froze the
gates, the parameters are finite, the target is reachable and the gate kinds support an importance init."""

from __future__ import annotations

import torch

from lightning_prune.errors import AttachStateError, NonFiniteError, PruningConfigError
from lightning_prune.gates import Gate
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner.state import STATE_ATTRIBUTE


class AttachChecksMixin:
    """The checks :class:`~lightning_prune.pruner.Pruner` runs at attach, each step and before an export."""

    def _check_attached(self) -> None:
        if getattr(self.model, STATE_ATTRIBUTE, None) is not self.state:
            raise AttachStateError("These gates were detached from the model (or replaced); attach again.")
        for path, module in self._hooked:
            current = self.hf_model.get_submodule(path) if path else self.hf_model
            if current is not module:
                raise AttachStateError(
                    f"`{path}` was replaced after attach() (now "
                    f"{type(current).__module__}.{type(current).__qualname__}), so its masks are no longer applied. "
                    "Apply peft's get_peft_model (or any other module surgery) *before* lightning_prune.attach()."
                )
        frozen = [n for n, p in self.gates.named_parameters() if not p.requires_grad]
        if frozen and self.phase == "prune":
            raise AttachStateError(
                f"Gate parameters {frozen[:3]} do not require grad: something froze them after attach() (peft's "
                "get_peft_model does). Apply peft before lightning_prune.attach()."
            )

    def _check_materialised(self) -> None:
        meta = [n for n, t in self.model.named_parameters() if t.is_meta]
        meta += [n for n, t in self.model.named_buffers() if t.is_meta]
        if meta:
            raise AttachStateError(
                f"The model's weights were never materialised: {len(meta)} tensor(s) are still on the meta device "
                f"(e.g. {meta[:3]}), so there is nothing to export. Load the weights first: "
                "`model.to_empty(device='cpu')` then `model.load_state_dict(...)` (or a checkpoint load), keeping the "
                "gates attached; or attach to a model loaded with `from_pretrained`."
            )

    def _check_finite_parameters(self) -> None:
        for name, p in self.state.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteError(
                    f"Gate parameter `{name}` holds NaN/inf at pruning step {self.pruning_step}. The model was not "
                    "exported. Resume from the last checkpoint with a lower `gate_lr` or check the task loss for NaN."
                )

    def _check_target_reachable(self) -> None:
        zeros = {name: torch.zeros(spec.rows, spec.units) for name, spec in self.specs.items()}
        reachable = float(self.cost.sparsity(zeros, self.config.target))
        if self.config.target_sparsity > reachable + 1e-9:
            raise PruningConfigError(
                f"`target_sparsity`={self.config.target_sparsity} cannot be reached by pruning {list(self.specs)}: "
                f"removing every unit of them removes only {reachable:.3f} of the prunable {self.config.target}. "
                f"{_more_structures(self)}"
            )


def _check_importance_init(gates: dict[str, Gate], config: PruningConfig) -> None:
    unsupported = sorted({type(g).__name__ for g in gates.values() if g.default_importance_spread is None})
    if unsupported:
        raise PruningConfigError(
            f"`init_from_importance=True` needs gates with an importance init; {unsupported} ({config.method_name}) "
            "have none. Use `init_from_importance=False` with this method."
        )


def _more_structures(pruner) -> str:
    """The advice: gate more of the model (the adapter's structures not gated yet, when there are any) or lower the
    target."""
    others = [name for name in pruner.adapter.structures() if name not in pruner.specs]
    if not others:
        return "Lower the target."
    return f"Add structures ({', '.join(repr(n) for n in others)} are not gated) or lower the target."
