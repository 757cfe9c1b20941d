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

#: The documentation of every option of :class:`RunOptions`, as a docstring's argument list (8 spaces in): shown by
#: ``help()`` of both callbacks (:func:`documents_run_options`) and by ``lightning-prune fit --help`` (jsonargparse
#: reads it from :class:`RunOptions`).
RUN_OPTIONS_DOC = """\
        dense_steps: optimizer steps trained without masks before pruning starts (default ``None``: 0, or the
            ``"auto"`` schedule's).
        freeze_after_steps: global step from which the masks are frozen (must be > ``dense_steps``; default
            ``None``: prune until the end, or the ``"auto"`` schedule's freeze).
        overwrite_export: replace a non-empty ``export_dir`` (default ``False``).
        plot: write the kept-units heatmap next to the export; Lightning also logs it as an image to TensorBoard /
            wandb loggers (default ``True``).
        adapter: force a registered model adapter by name (see ``lightning_prune.available_adapters()``; default
            ``None``: the one that matches the model).
        seed: base seed of the gate samples; each micro-batch draws from a seed derived from it, the global step and
            the micro-batch index (default ``None``: the run's seed, ``PL_GLOBAL_SEED`` set by Lightning's
            ``seed_everything`` or ``TrainingArguments.seed``).
        log_stats: log the pruning statistics (target, expected and exact sparsity, λ, kept units) under
            ``pruning/`` with the training logs (default ``True``).
        reset_optimizer_at_freeze: when the masks freeze (at ``freeze_after_steps``), forget the optimizer state of
            the model's weights so that the final architecture fine-tunes with fresh moments, as after the cut of a
            prune-then-fine-tune pipeline (default ``None``: off, or on under the ``"auto"`` schedule).
        schedule: ``"auto"`` (default): for an :class:`~lightning_prune.L0Config`, when none of ``dense_steps``,
            ``freeze_after_steps``, ``reset_optimizer_at_freeze`` is given, the phases of
            :func:`lightning_prune.recipes.l0` for the run's length (``max_steps``, or epochs × batches / gradient
            accumulation), measured best on ``benchmarks/quality.py`` (issue #18): runs of 200+ steps train dense
            30%, reach the target over 5% and freeze at 40% with a fresh optimizer state (above a 50% target the
            warm-up and the freeze move later, by 25% of the run per unit of target: 15% / 50% at 90%); shorter runs
            10% / 30% / 50%. A config with ``warmup_steps=0`` gets the recipe's warm-up. A
            :class:`~lightning_prune.GradualConfig`: dense 10%, warm-up 20%, frozen from 30%
            (``lightning_prune.phases.GRADUAL_SCHEDULE``); on a model that trains peft adapters (LoRA) the whole
            target at the first pruning step, frozen from 12% (two steps later at least), no reset
            (``GRADUAL_ADAPTER_SCHEDULE``). Other methods, or any phase argument given: ``"manual"``. ``"manual"``:
            the values given (unset: no dense phase, no freeze, no reset).
"""


class RunOptions(TypedDict, total=False):
    dense_steps: int | None
    freeze_after_steps: int | None
    overwrite_export: bool
    plot: bool
    adapter: str | None
    seed: int | None
    log_stats: bool
    reset_optimizer_at_freeze: bool | None
    schedule: str


RunOptions.__doc__ = f"""The options every integration passes to its driver (:class:`.TrainingDriver`): keyword
    arguments of :class:`~lightning_prune.PruningCallback` and ``PruningTrainerCallback``, declared once.

    Attributes:
{RUN_OPTIONS_DOC}"""


def documents_run_options(cls: type) -> type:
    """Class decorator: put :data:`RUN_OPTIONS_DOC` where the class docstring says ``{run_options}`` (one text for
    every callback's ``help()``, as pandas' ``@doc`` shares docstrings)."""
    cls.__doc__ = (cls.__doc__ or "").replace("        {run_options}\n", RUN_OPTIONS_DOC)
    return cls


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
