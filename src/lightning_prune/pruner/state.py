"""The gates' home inside the model: :class:`PruningState`, the child module ``model.pruning_gates``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.gates import Gate

#: Name of the child module that holds the gates, multipliers and schedule state inside the model.
STATE_ATTRIBUTE = "pruning_gates"


class PruningState(nn.Module):
    """Everything the pruner trains or must resume: gates, regulariser (λ), pruning-step counter.

    It is attached to the user's model as a child module (``model.pruning_gates``) so that DDP/FSDP
    all-reduce the gate gradients, and a Lightning checkpoint carries it in the model's state dict.
    Its floating-point tensors stay in fp32 whatever ``model.to(dtype)`` or a precision plugin does.

    A model that runs its own children in order (an ``nn.Sequential``, an ``nn.ModuleList`` / ``nn.ModuleDict``
    subclass iterating itself, ``for m in self.children()``) also calls this module: its forward is the identity,
    so such a model computes what it computed before attach. Being a registered child is what keeps the gates in
    ``parameters()`` (DDP, optimizers), ``state_dict()`` (checkpoints) and ``.to()``; the price is that an attached
    ``nn.Sequential`` counts it in ``len(model)`` and ``model[-1]`` (``detach()`` removes it).
    """

    def __init__(self, gates: dict[str, Gate], regularizer: nn.Module) -> None:
        super().__init__()
        self.gates = nn.ModuleDict(gates)
        self.regularizer = regularizer
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, *inputs: Any) -> Any:
        """The identity (one input is returned as is, several as a tuple): see the class docstring."""
        return inputs[0] if len(inputs) == 1 else inputs

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Every conversion keeps the values: fp32 whatever the dtype asked for, and ``model.to_empty(device=...)``
        (which materialises a model built on the meta device with uninitialised memory) carries the gates and
        multipliers over instead of wiping them. A checkpoint loaded afterwards still replaces them."""

        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t.is_floating_point() and out.is_floating_point() and out.dtype != torch.float32:
                out = out.float()
            return out

        tensors = dict(self.named_parameters()) | dict(self.named_buffers())
        saved = {name: t.detach().clone() for name, t in tensors.items() if not t.is_meta}
        out = super()._apply(keep_fp32, recurse)
        with torch.no_grad():
            for name, t in (dict(self.named_parameters()) | dict(self.named_buffers())).items():
                if name in saved and not t.is_meta and t.shape == saved[name].shape:
                    t.copy_(saved[name])
        return out
