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

from typing import Any

from lightning_prune.methods.l0 import L0Config
from lightning_prune.phases import L0_SCHEDULE, L0Schedule, phase_steps

__all__ = ["L0_SCHEDULE", "L0Schedule", "l0", "l0_callback", "phase_steps"]


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
    dense, warmup, freeze = phase_steps(max_steps, schedule, target_sparsity)
    fields = dict(
        target_sparsity=target_sparsity,
        structures=tuple(structures),
        warmup_steps=warmup,
        gate_lr=schedule.gate_lr,
        lagrangian_lr=schedule.lagrangian_lr,
        init_from_importance=True,
    )
    fields.update(config_fields)
    phases = {
        "dense_steps": dense,
        "freeze_after_steps": freeze,
        "reset_optimizer_at_freeze": schedule.reset_optimizer_at_freeze,
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
