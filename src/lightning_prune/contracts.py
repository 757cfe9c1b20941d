"""Checks that turn a silently wrong set-up into an error a user can act on.

At ``attach``: a ``torch.compile`` wrapper instead of the model, a model without layers, example inputs the model
cannot run. During the first training steps: gates (or multipliers) that receive gradients but that the optimizer
never updates, because they were left out of its parameter groups (:class:`GateUpdateCheck`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError, TrainingContractError, UnsupportedModelError

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

log = logging.getLogger("lightning_prune")

#: What to do when the gates are not in the optimizer (shared by every message that says so).
OPTIMIZER_FIX = (
    "Build the optimizer from `pruner.param_groups(lr=...)` (the model's trainable parameters, the gates and the "
    "multipliers, each with its own learning rate), e.g. `torch.optim.AdamW(pruner.param_groups(lr=2e-5))`, or add "
    "`{'params': pruner.gate_parameters(), 'lr': config.gate_lr}` and `{'params': pruner.multiplier_parameters()}` "
    "groups to yours."
)


def check_not_compiled(model: nn.Module) -> None:
    """Refuse a ``torch.compile`` wrapper: the gates' hooks and state must sit on the original module."""
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module):
        raise UnsupportedModelError(
            f"`model` is a torch.compile wrapper ({type(model).__name__} around {type(original).__name__}): gates "
            "attached to it would not be part of the compiled module. Attach to the original module and compile "
            "afterwards: `pruner = lightning_prune.attach(model, config); model = torch.compile(model)` (the original "
            "is `compiled._orig_mod`)."
        )


def check_has_layers(model: nn.Module) -> None:
    """Refuse a transformer whose config has no layers (``num_hidden_layers=0``): there is nothing to prune."""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if isinstance(layers, int) and not isinstance(layers, bool) and layers < 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} has num_hidden_layers={layers}: no transformer layer, so there are no heads, "
            "FFN channels or blocks to prune. Load a model with at least one layer (check the checkpoint's "
            "config.json)."
        )


def _shapes(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)


def example_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` as the tuple of tensors a tracer passes to the model positionally.

    Raises:
        PruningConfigError: neither a tensor nor a non-empty sequence of tensors.
    """
    if torch.is_tensor(example_inputs):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and example_inputs and all(torch.is_tensor(t) for t in example_inputs):
        return tuple(example_inputs)
    raise PruningConfigError(
        "`example_inputs` must be a tensor or a tuple of tensors the model accepts positionally, e.g. "
        f"torch.randn(1, 3, 32, 32); got {type(example_inputs).__name__}."
    )


def check_example_inputs_run(model: nn.Module, example_inputs: Any) -> None:
    """Run ``model`` once on ``example_inputs`` (eval mode, no grad) before a tracer sees them, so that inputs of the
    wrong shape fail with the model's own error and the shapes given, not with an error inside the tracer."""
    if torch.is_tensor(example_inputs):
        inputs: tuple[torch.Tensor, ...] = (example_inputs,)
    elif isinstance(example_inputs, Sequence) and example_inputs and all(torch.is_tensor(t) for t in example_inputs):
        inputs = tuple(example_inputs)
    else:
        return  # the adapter says what it accepts
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as err:  # the model's own complaint is the real cause: repeat it with the shapes
        raise PruningConfigError(
            f"`example_inputs` of shape {_shapes(inputs)} do not run through {type(model).__name__}: "
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''} "
            "Pass a tensor (or a tuple of tensors, given positionally) shaped as the model's training inputs, "
            "batch dimension included, e.g. torch.randn(1, 3, 32, 32) for an image model."
        ) from err
    finally:
        model.train(was_training)


def check_optimizer_holds_gates(optimizer: torch.optim.Optimizer, pruner: Pruner) -> None:
    """Raise :class:`TrainingContractError` if trainable gate or multiplier parameters are in none of the optimizer's
    parameter groups."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in pruner.state.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise TrainingContractError(
            f"The optimizer does not hold {len(missing)} pruning parameter(s) (e.g. {missing[:3]}), so they would "
            f"never move and the masks would not learn. {OPTIMIZER_FIX}"
        )


class GateUpdateCheck:
    """Detects, in the first steps of a plain-PyTorch loop, gates and multipliers that get gradients but are not
    updated by the optimizer.

    A parameter's version counter moves whenever an optimizer writes it (in place). :meth:`Pruner.step` (after
    ``optimizer.step()``) compares the counters with those of the previous step: a pruning parameter that received a
    non-zero gradient but did not move, in a step where other trainable parameters did, is not in the optimizer.
    A step where nothing moved (an AMP step skipped for inf gradients, gradient accumulation) proves nothing and is
    skipped; after a few of those with only pruning parameters trainable, it warns instead. The check stops (and its
    gradient hooks are removed) once it has concluded, so later steps cost nothing.
    """

    #: Inconclusive steps (nothing moved) tolerated before warning once and stopping.
    MAX_INCONCLUSIVE = 3

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        self.names = {id(p): name for name, p in pruner.state.named_parameters()}
        self.grad_seen: set[int] = set()
        self.inconclusive = 0
        self.handles = [
            p.register_post_accumulate_grad_hook(self._on_grad)
            for p in pruner.state.parameters()
            if hasattr(p, "register_post_accumulate_grad_hook")
        ]
        self.versions = self._versions()

    def _on_grad(self, param: torch.Tensor) -> None:
        if id(param) not in self.names or id(param) in self.grad_seen:  # e.g. a deep copy's parameter
            return
        if param.grad is not None and bool(param.grad.detach().ne(0).any()):
            self.grad_seen.add(id(param))

    def _versions(self) -> dict[int, int]:
        return {id(p): p._version for p in self.pruner.model.parameters() if p.requires_grad}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def before_step(self) -> bool:
        """Called by :meth:`Pruner.step` before it clamps the gates; ``True`` when the check has concluded.

        Raises:
            TrainingContractError: pruning parameters got gradients but the optimizer did not update them.
        """
        params = [p for p in self.pruner.model.parameters() if p.requires_grad]
        moved = {id(p) for p in params if self.versions.get(id(p), -1) != p._version}
        if not self.grad_seen:  # no gradient reached the gates (yet): nothing to conclude
            return False
        stuck = sorted(self.names[i] for i in self.grad_seen if i not in moved)
        self.grad_seen = set()
        if not stuck:
            return True  # the optimizer updates the pruning parameters: done
        if moved:
            raise TrainingContractError(
                f"The pruning parameters {stuck[:3]} received gradients but the optimizer did not update them at "
                f"pruning step {self.pruner.pruning_step} (other parameters moved): they are not in the optimizer's "
                f"parameter groups, so the masks would never learn. {OPTIMIZER_FIX}"
            )
        self.inconclusive += 1
        if self.inconclusive < self.MAX_INCONCLUSIVE:
            return False
        log.warning(
            "lightning-prune: the pruning parameters %s received gradients but did not move in %d optimizer steps. "
            "If the optimizer does not hold them, the masks never learn. %s",
            stuck[:3],
            self.inconclusive,
            OPTIMIZER_FIX,
        )
        return True

    def after_step(self) -> None:
        """Called by :meth:`Pruner.step` after it clamped the gates (its own writes are not the optimizer's)."""
        self.versions = self._versions()
