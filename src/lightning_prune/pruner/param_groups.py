"""The optimizer's parameter groups: the model's weights, the gates, the multipliers and a method's own modules."""

from __future__ import annotations

from typing import Any

from torch import nn


class ParamGroupsMixin:
    """The optimizer side of :class:`~lightning_prune.pruner.Pruner`."""

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.gates.parameters())

    def multiplier_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.gate_parameters() + self.module_parameters()}
        return [p for p in self.state.parameters() if id(p) not in ids]

    def module_parameters(self) -> list[nn.Parameter]:
        """Parameters of modules a method adds to the model (``state.method_modules``, e.g. PAT's HSMs): trained
        like model weights, in every phase."""
        modules = getattr(self.state, "method_modules", None)
        return list(modules.parameters()) if modules is not None else []

    def param_groups(
        self, lr: float, weight_decay: float = 0.0, gate_lr: float | None = None, lagrangian_lr: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the model's trainable parameters, the gates and the multipliers.

        Gates and multipliers get their own learning rates and no weight decay; the multipliers are
        maximised (their gradient is reversed in the graph), so one ordinary optimizer serves all groups.
        A method's own modules (PAT's HSMs, :meth:`module_parameters`) get the group ``lightning_prune.modules``
        with the model's ``lr`` and no weight decay.
        """
        gate_lr = gate_lr or self.config.gate_lr
        lagrangian_lr = lagrangian_lr or self.config.lagrangian_lr or gate_lr
        own = {id(p) for p in self.state.parameters()}
        model_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        groups = [
            {"params": model_params, "lr": lr, "weight_decay": weight_decay, "name": "model"},
            {"params": self.gate_parameters(), "lr": gate_lr, "weight_decay": 0.0, "name": "lightning_prune.gates"},
            {
                "params": self.multiplier_parameters(),
                "lr": lagrangian_lr,
                "weight_decay": 0.0,
                "name": "lightning_prune.multipliers",
            },
            {"params": self.module_parameters(), "lr": lr, "weight_decay": 0.0, "name": "lightning_prune.modules"},
        ]
        return [g for g in groups if g["params"]]
