"""The driver's options and state as attributes of an integration callback.

:class:`~lightning_prune.PruningCallback` and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainerCallback`
each hold a :class:`~lightning_prune.integrations.driver.TrainingDriver` in ``self.driver``. :class:`DriverFacade`
gives them its public names, so ``callback.dense_steps``, ``callback.pruner`` or ``callback.phase_at(step)`` read
(and, for options, write) the driver's: one value, one place, whichever object a user holds.
"""

from __future__ import annotations

from typing import Any

from lightning_prune.integrations.driver import TrainingDriver


class _OnDriver:
    """A class attribute that reads (and writes, unless ``read_only``) the same name on ``instance.driver``."""

    def __init__(self, read_only: bool = False) -> None:
        self.read_only = read_only
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:  # on the class: the driver's (its docstring, FREEZE_LAG's value)
            return getattr(TrainingDriver, self.name, self)
        return getattr(instance.driver, self.name)

    def __set__(self, instance: Any, value: Any) -> None:
        if self.read_only:
            raise AttributeError(f"`{self.name}` of {type(instance).__name__} cannot be set.")
        setattr(instance.driver, self.name, value)


class DriverFacade:
    """Mixin of the integration callbacks: the driver's options, state and schedule under the callback's name.

    Options (readable and writable): ``config``, ``export_dir``, ``dense_steps``, ``freeze_after_steps``,
    ``reset_optimizer_at_freeze``, ``schedule``, ``seed``, ``adapter``, ``overwrite_export``, ``plot``,
    ``log_stats``. State (read-only): ``pruner``, ``phase``. Methods: ``phase_at``, ``pruning_step_at``,
    ``schedule_warning``, ``freeze_lag_warning``, ``log_stats_dict``.
    """

    driver: TrainingDriver  # set by the integration's __init__

    config = _OnDriver()
    export_dir = _OnDriver()
    dense_steps = _OnDriver()
    freeze_after_steps = _OnDriver()
    reset_optimizer_at_freeze = _OnDriver()
    schedule = _OnDriver()
    seed = _OnDriver()
    adapter = _OnDriver()
    overwrite_export = _OnDriver()
    plot = _OnDriver()
    log_stats = _OnDriver()
    FREEZE_LAG = _OnDriver()

    pruner = _OnDriver(read_only=True)
    """The :class:`~lightning_prune.Pruner` this integration attached (``None`` before it did)."""
    _pruner = _OnDriver(read_only=True)
    phase = _OnDriver(read_only=True)
    """The current phase: ``"dense"``, ``"prune"`` or ``"frozen"``."""

    phase_at = _OnDriver(read_only=True)
    pruning_step_at = _OnDriver(read_only=True)
    schedule_warning = _OnDriver(read_only=True)
    freeze_lag_warning = _OnDriver(read_only=True)
    log_stats_dict = _OnDriver(read_only=True)
