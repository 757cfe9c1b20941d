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
        gate_lr: learning rate of the hard-concrete ``log α``. With Adam a gate moves about ``gate_lr`` per step, so
            in a short run it must be large enough for the gates to close within the target warm-up: at 0.1 (and
            λ lr 0.01) the expected sparsity was still 6% when the target had reached 32% (MiniLM, quick run,
            issue #18), and the exact-target cut at the freeze did all the pruning at once.
        lagrangian_lr: learning rate of λ1, λ2 (gradient ascent).
        reset_optimizer_at_freeze: fresh optimizer state for the model's weights when the masks freeze.
    """

    dense: float = 0.1
    warmup: float = 0.3
    freeze: float = 0.5
    gate_lr: float = 0.5
    lagrangian_lr: float = 0.5
    reset_optimizer_at_freeze: bool = True


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
