"""The driver's options and state as attributes of an integration callback.

:class:`~lightning_prune.PruningCallback` and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainerCallback`
each hold a :class:`~lightning_prune.integrations.driver.TrainingDriver` in ``self.driver``. :class:`DriverFacade`
gives them its public names, so ``callback.dense_steps``, ``callback.pruner`` or ``callback.phase_at(step)`` read
(and, for options, write) the driver's: one value, one place, whichever object a user holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_prune.integrations.driver import TrainingDriver

#: The driver's options: each callback takes them as arguments, hands them to its driver by name
#: (:meth:`DriverFacade._make_driver`) and reads and writes them as its own attributes.
DRIVER_OPTIONS = (
    "config",
    "export_dir",
    "dense_steps",
    "freeze_after_steps",
    "reset_optimizer_at_freeze",
    "schedule",
    "seed",
    "adapter",
    "overwrite_export",
    "plot",
    "log_stats",
)


class _OnDriver:
    """A class attribute that reads (and writes, unless ``read_only``) the same name on ``instance.driver``."""

    def __init__(self, read_only: bool = False, name: str = "") -> None:
        self.read_only = read_only
        self.name = name

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

    Options (readable and writable): :data:`DRIVER_OPTIONS` (set on the class below it) and ``FREEZE_LAG``. State
    (read-only): ``pruner``, ``phase``. Methods: ``phase_at``, ``pruning_step_at``, ``schedule_warning``,
    ``freeze_lag_warning``, ``log_stats_dict``.
    """

    driver: TrainingDriver  # set by the integration's __init__ (:meth:`_make_driver`)

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

    def _make_driver(self, arguments: Mapping[str, Any], **wiring: Any) -> None:
        """``self.driver``: a :class:`TrainingDriver` with the :data:`DRIVER_OPTIONS` in ``arguments`` (the callback's
        ``__init__`` arguments, ``locals()``) and ``wiring`` (hints and message sinks of the integration)."""
        self.driver = TrainingDriver(**{name: arguments[name] for name in DRIVER_OPTIONS}, **wiring)


for _name in DRIVER_OPTIONS:
    setattr(DriverFacade, _name, _OnDriver(name=_name))
