"""One-line recipes: a config and a phase schedule derived from the run's length.

The schedule matters as much as the method: a learned mask needs a dense warm-up to score the units, a target
warm-up to move the gates, and time to fine-tune on its final architecture. The fractions below are the ones that
measured best on the quality benchmark (``benchmarks/quality.py``, MiniLM-L6, issue #18); see
``docs/benchmarks.md``.

Example::

    import lightning as L
    import lightning_prune as lp

    callback = lp.recipes.l0_callback(target_sparsity=0.5, max_steps=300, export_dir="compact/")
    L.Trainer(max_steps=300, callbacks=[callback]).fit(module, data)

    config, schedule = lp.recipes.l0(target_sparsity=0.5, max_steps=300)   # plain API / HF Trainer
    pruner = lp.attach(model, config)   # then: set_phase("dense") until schedule["dense_steps"], ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_prune.errors import PruningConfigError
from lightning_prune.methods.l0 import L0Config


@dataclass(frozen=True)
class L0Schedule:
    """Fractions of ``max_steps`` for each phase of :func:`l0` (measured on ``benchmarks/quality.py``).

    Attributes:
        dense: dense warm-up; with ``init_from_importance`` it also accumulates the units' Fisher scores.
        warmup: target warm-up (the Lagrangian's target rises linearly from 0), counted from the end of the dense
            phase.
        freeze: global step (fraction) from which the masks are frozen and the model fine-tunes its final shape.
        gate_lr: learning rate of the hard-concrete ``log α``; ``None``: by the target warm-up's length (below).
        lagrangian_lr: learning rate of λ1, λ2 (gradient ascent); ``None``: by the warm-up's length.
        reset_optimizer_at_freeze: fresh optimizer state for the model's weights when the masks freeze; ``None``: by
            the warm-up's length.
        short_warmup: a target warm-up of fewer steps than this is "short".

    The rates depend on the warm-up's length because with Adam a gate moves about ``gate_lr`` per step and λ about
    ``lagrangian_lr``: in a short warm-up, 0.1 / 0.01 cannot follow the target (MiniLM, 30-step warm-up: expected
    sparsity 0.06 when the target had reached 0.32, so the exact-target cut at the freeze did all the pruning in one
    step), and 0.5 / 0.5 with a fresh optimizer state at the freeze was best over three seeds (quick budget, 50%:
    0.492 vs 0.455). In a long one the fast rates only add noise: 90-step warm-up, 50%, three seeds, 0.538 vs 0.550
    for 0.1 / 0.01 without the reset (issue #18, docs/benchmarks.md). Both points are measured; between them the
    threshold is a choice, not a measurement.
    """

    dense: float = 0.1
    warmup: float = 0.3
    freeze: float = 0.5
    gate_lr: float | None = None
    lagrangian_lr: float | None = None
    reset_optimizer_at_freeze: bool | None = None
    short_warmup: int = 60

    def rates(self, warmup_steps: int) -> tuple[float, float, bool]:
        """``(gate_lr, lagrangian_lr, reset_optimizer_at_freeze)`` for a target warm-up of ``warmup_steps``."""
        short = warmup_steps < self.short_warmup
        gate_lr = self.gate_lr if self.gate_lr is not None else (0.5 if short else 0.1)
        lagrangian_lr = self.lagrangian_lr if self.lagrangian_lr is not None else (0.5 if short else 0.01)
        reset = self.reset_optimizer_at_freeze if self.reset_optimizer_at_freeze is not None else short
        return gate_lr, lagrangian_lr, reset


#: The schedule :func:`l0` uses unless told otherwise.
L0_SCHEDULE = L0Schedule()


def l0(
    target_sparsity: float,
    max_steps: int,
    structures: tuple[str, ...] = ("heads", "ffn"),
    schedule: L0Schedule = L0_SCHEDULE,
    **config_fields: Any,
) -> tuple[L0Config, dict[str, int]]:
    """An :class:`~lightning_prune.L0Config` and the phase steps for a run of ``max_steps`` optimizer steps.

    Args:
        target_sparsity: fraction of prunable parameters (or FLOPs with ``target="flops"``) to remove.
        max_steps: the run's optimizer steps (the Trainer's ``max_steps``).
        structures: the structures to gate.
        schedule: phase fractions and learning rates (default :data:`L0_SCHEDULE`).
        **config_fields: any other :class:`~lightning_prune.L0Config` field (they win over the recipe's).

    Returns:
        ``(config, schedule)`` with ``schedule = {"dense_steps": ..., "freeze_after_steps": ...,
        "reset_optimizer_at_freeze": ...}``, the keyword arguments of :class:`~lightning_prune.PruningCallback` and
        of the HF Trainer integration's callback.

    Raises:
        PruningConfigError: ``max_steps`` is too small for three phases (under 4 steps).
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 4:
        raise PruningConfigError(
            f"`max_steps` must be an int >= 4 (dense warm-up, pruning and frozen fine-tuning each need steps), got "
            f"{max_steps!r}."
        )
    dense = max(1, int(max_steps * schedule.dense))
    freeze = max(dense + 2, int(max_steps * schedule.freeze))
    warmup = max(1, min(int(max_steps * schedule.warmup), freeze - dense))
    gate_lr, lagrangian_lr, reset = schedule.rates(warmup)
    fields = dict(
        target_sparsity=target_sparsity,
        structures=tuple(structures),
        warmup_steps=warmup,
        gate_lr=gate_lr,
        lagrangian_lr=lagrangian_lr,
        init_from_importance=True,
    )
    fields.update(config_fields)
    phases = {
        "dense_steps": dense,
        "freeze_after_steps": freeze,
        "reset_optimizer_at_freeze": reset,
    }
    return L0Config(**fields), phases


def l0_callback(
    target_sparsity: float,
    max_steps: int,
    structures: tuple[str, ...] = ("heads", "ffn"),
    schedule: L0Schedule = L0_SCHEDULE,
    config_fields: dict[str, Any] | None = None,
    **callback_kwargs: Any,
):
    """A ready :class:`~lightning_prune.PruningCallback` with :func:`l0`'s config and schedule.

    Args:
        callback_kwargs: other arguments of the callback (``export_dir``, ``seed``, ``plot``, ...).
        config_fields: other :class:`~lightning_prune.L0Config` fields (e.g. ``{"flops_seq_len": 128}``).
        (the rest as in :func:`l0`.)
    """
    from lightning_prune.integrations.lightning import PruningCallback

    fields = dict(config_fields or {})
    if "flops_seq_len" in callback_kwargs:  # a config field passed with the callback's arguments: accept it
        fields["flops_seq_len"] = callback_kwargs.pop("flops_seq_len")
    config, phases = l0(target_sparsity, max_steps, structures, schedule, **fields)
    return PruningCallback(config, **phases, **callback_kwargs)
