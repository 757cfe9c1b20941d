"""What the integration callbacks share: the driver's options, declared once, and its names on the callback.

:class:`~lightning_prune.PruningCallback` and :class:`~lightning_prune.integrations.hf_trainer.PruningTrainerCallback`
each hold a :class:`~lightning_prune.integrations.driver.TrainingDriver` in ``self.driver``, built by
:class:`DriverFacade` from the options of :class:`RunOptions` (the one list of them: both callbacks take them as
``**options`` and type checkers see every name through ``Unpack``). :class:`DriverFacade` also gives the callbacks the
driver's public names, so ``callback.dense_steps``, ``callback.pruner`` or ``callback.phase_at(step)`` read (and, for
options, write) the driver's: one value, one place, whichever object a user holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from lightning_prune.integrations.driver import TrainingDriver
from lightning_prune.methods.base import PruningConfig


class RunOptions(TypedDict, total=False):
    """The options every integration passes to its :class:`~lightning_prune.integrations.driver.TrainingDriver`
    (keywords of :class:`~lightning_prune.PruningCallback` and ``PruningTrainerCallback``, documented there; the
    defaults are the driver's)."""

    dense_steps: int | None
    freeze_after_steps: int | None
    overwrite_export: bool
    plot: bool
    adapter: str | None
    seed: int | None
    log_stats: bool
    reset_optimizer_at_freeze: bool | None
    schedule: str


#: Names a callback reads and writes on its driver: the options, ``config`` and ``export_dir``.
OPTIONS = frozenset(RunOptions.__annotations__) | {"config", "export_dir"}
#: Names a callback reads on its driver: its state, its schedule's queries and one threshold.
STATE = frozenset(
    {"pruner", "_pruner", "phase", "phase_at", "pruning_step_at", "schedule_warning", "freeze_lag_warning"}
    | {"log_stats_dict", "FREEZE_LAG"}
)


class DriverFacade:
    """Mixin of the integration callbacks: builds the driver and gives its options, state and schedule the
    callback's name.

    Options (readable and writable): ``config``, ``export_dir`` and those of :class:`RunOptions`. State (read-only):
    ``pruner`` (the :class:`~lightning_prune.Pruner`, ``None`` before attaching), ``phase`` (``"dense"``, ``"prune"``
    or ``"frozen"``). Methods: ``phase_at``, ``pruning_step_at``, ``schedule_warning``, ``freeze_lag_warning``,
    ``log_stats_dict``.
    """

    driver: TrainingDriver

    def __init__(
        self,
        config: PruningConfig,
        export_dir: str | Path | None,
        options: RunOptions,
        *,
        overwrite_hint: str,
        info: Callable[[str], None],
        warn: Callable[[str], None],
        config_hint: str = "",
    ) -> None:
        unknown = sorted(set(options) - RunOptions.__annotations__.keys())
        if unknown:  # the driver would name itself in the TypeError; the user called the callback
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; its "
                f"options are {', '.join(RunOptions.__annotations__)} (see help({type(self).__name__}))."
            )
        self.driver = TrainingDriver(
            config, export_dir, **options, config_hint=config_hint, overwrite_hint=overwrite_hint, info=info, warn=warn
        )

    def __getattr__(self, name: str) -> Any:  # only names not found on the callback itself
        if name in OPTIONS or name in STATE:
            driver = self.__dict__.get("driver")
            if driver is not None:
                return getattr(driver, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in OPTIONS:
            setattr(self.driver, name, value)
        elif name in STATE:
            raise AttributeError(f"`{name}` of {type(self).__name__} cannot be set.")
        else:
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | OPTIONS | STATE)
