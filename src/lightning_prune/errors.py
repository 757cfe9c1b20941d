"""Exceptions raised by lightning-prune.

Every error says what is wrong, the value received and what to do about it (see STYLE.md, habit 5).
They subclass the built-in exception a user would expect (``ValueError``, ``TypeError``, ``RuntimeError``)
so that ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PruningConfigError(ValueError):
    """A configuration value is invalid (a target outside [0, 1), an unknown structure name, ...)."""


class UnknownNameError(PruningConfigError, LookupError):
    """A name is not in a registry (gate kinds, methods, adapters, generator backbones, ATP layouts, per-layer
    families); the message names the kind, the name, the registered names and how to register one. ``except
    PruningConfigError``, ``except ValueError`` and ``except LookupError`` all catch it."""


class ExportDirectoryError(PruningConfigError, FileExistsError):
    """The export directory cannot receive the export: it is a file, it is not empty (and ``overwrite`` is off) or it
    is not writable. Raised before any export work, by ``Pruner.save_compact``, ``save_compact``, the Lightning and
    Hugging Face callbacks' ``export_dir`` checks and ``lightning-prune export`` alike; ``except PruningConfigError``,
    ``except FileExistsError`` and ``except OSError`` all catch it."""


class UnsupportedModelError(TypeError):
    """No registered model adapter can handle the model, or the model lacks something the adapter needs."""


class UnknownAdapterError(UnknownNameError, UnsupportedModelError):
    """No adapter is registered under the name asked for; also an :class:`UnsupportedModelError` (a ``TypeError``),
    the type this lookup raised before the registries were unified."""


class ExportMismatchError(RuntimeError):
    """The compact model does not compute what the gated model computed; nothing was returned or saved."""


class CorruptExportError(ExportMismatchError):
    """A saved export no longer holds what ``save_compact`` wrote: a weights file truncated, removed or edited, a
    tensor taken out, the config changed, or the loaded model does not compute the outputs stored with it. Raised by
    ``load_compact`` (``verify=True``) before the model is returned; the message names the file and says how to load
    it anyway (``verify=False``)."""


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the gates, the penalty or the loss; training is stopped before the model is damaged."""


class AttachStateError(RuntimeError):
    """The gated model changed in a way the pruner cannot follow (e.g. LoRA applied after ``attach``)."""


class TrainingContractError(RuntimeError):
    """Training broke an assumption the pruner relies on, e.g. the gates receive gradients but the optimizer never
    updates them (they were left out of its parameter groups). Raised at the first step where it shows."""


class DependencyVersionError(ImportError):
    """An installed dependency is outside the versions lightning-prune supports (the message says which and how to
    install a supported set)."""
