"""The method interface: a validated config that builds gates and regularisers over the core engine.

A method is one dataclass that subclasses :class:`PruningConfig` plus one :func:`register_method` call.
The pruner asks the config for a gate per structure (:meth:`PruningConfig.build_gate`) and for the
penalty terms added to the task loss (:meth:`PruningConfig.build_regularizer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lightning_prune.errors import AttachStateError, PruningConfigError
from lightning_prune.gates import Gate, gate_class
from lightning_prune.methods.field_checks import _checked_value, _default_of, _types_checked_first, check_field_types
from lightning_prune.methods.registry import available_methods, method_config_class, register_method
from lightning_prune.structures import StructureSpec

#: Teachers of self-distillation (``PruningConfig.distill_teacher``), see :mod:`lightning_prune.distill`.
DISTILL_TEACHERS = ("ungated", "prune_start")

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

__all__ = [
    "PruningConfig",
    "available_methods",
    "check_field_types",
    "method_config_class",
    "positive_float",
    "register_method",
    "zero_with_graph",
]


@dataclass
class PruningConfig:
    """Options shared by every method.

    Every field is checked against its annotation when the config is built (a string, a bool where a number is
    expected, NaN or ``None`` where a value is needed raise :class:`PruningConfigError` naming the field, the value
    and the fix), then against its range. ``attach`` fixes the config: the pruner keeps its own copy and the object
    passed in becomes read-only (see :func:`lightning_prune.attach`).

    Args:
        target_sparsity: fraction of *prunable parameters* (or FLOPs, see ``target``) to remove, in
            [0, 1). Prunable parameters are the weights and biases of every attention projection and
            MLP projection in every layer; embeddings, the LM head and norms are not counted (they shrink
            with ``hidden`` and are reported separately).
        structures: which structures to gate (names from the model adapter, e.g. ``"heads"``, ``"ffn"``,
            ``"hidden"``, ``"attn_block"``, ``"mlp_block"``).
        target: ``"params"`` or ``"flops"``: what ``target_sparsity`` is a fraction of.
        warmup_steps: steps over which the target rises linearly from 0 (CoFi's Lagrangian warm-up).
        uniform: keep the same number of units in every layer so that the export is a standard config.
        keep_units: optional exact number of units to keep per row for some structures, e.g.
            ``{"heads": 2, "ffn": 128}`` (Sheared-LLaMA's target architecture). Overrides the learned count.
        match_target: make deterministic masks meet the current target exactly: the exact sparsity is at least
            the target and as close to it as the units allow. The learned per-row counts are corrected by removing
            the lowest-scored kept units (or restoring the best pruned ones that fit), see
            :mod:`lightning_prune.selection`. Without it the counts are ``round(Σ P(kept))`` per row (CoFi), which
            keeps a few phantom units because closed hard-concrete gates still have ``P(kept) ≈ 0.05``.
        gate_lr: learning rate of the gate parameters (own group, no weight decay).
        lagrangian_lr: learning rate of the Lagrange multipliers (gradient *ascent*); defaults to ``gate_lr``.
        flops_seq_len: sequence length used to count attention-score FLOPs.
        export_rtol: relative tolerance of the export equivalence check in fp32 (max abs diff / max abs).
        distill_weight: weight of self-distillation in the prune phase (0 = off, no extra forward): the same
            model with gates and LoRA adapters off is the teacher (no second copy of the weights), and
            ``distill_weight · (T²·KL + distill_hidden_weight · hidden MSE)`` is added by ``penalty()`` as the
            term ``"distill"`` (Hinton et al. 2015; CoFi uses 0.1 on the logit KL). See
            :mod:`lightning_prune.distill`.
        distill_temperature: softmax temperature ``T`` of the logit KL (CoFi: 2).
        distill_hidden_weight: weight, relative to the logit KL, of matching every block's output to the
            teacher's over the kept hidden dims (CoFi's layer loss; 0 = logits only).
        distill_teacher: which weights teach. ``"ungated"`` (default): the model with gates and peft adapters off,
            i.e. the pretrained model under LoRA, the current weights otherwise (no copy). ``"prune_start"``: the
            trainable weights as they were when the prune phase began (the end of the dense phase), with gates off
            and adapters on: CoFi's fine-tuned teacher, for the price of one copy of the *trainable* parameters
            (only the adapters under LoRA). Needs a dense phase to have learned something worth teaching.
        multiple_of: per structure, keep a multiple of this many units in every row of the deterministic masks
            (the export), e.g. ``{"ffn": 32}``: matrix kernels run faster on widths that are multiples of 8–64,
            which matters most for per-layer exports whose widths are otherwise arbitrary. Each row moves to the
            nearest multiple (never below one multiple when it keeps anything, never above the largest multiple in
            a row); with ``match_target`` whole groups of ``step`` units then move until the target is met, so the
            sparsity stays at or above it (by less than one group). Without ``match_target`` it can move off the
            target by up to half a multiple per row. A step larger than a row's units is refused at attach.
        init_from_importance: during the dense phase, accumulate each unit's Fisher ``Σ (∂L/∂m)²`` through all-ones
            masks, and at the dense → prune transition set the gates from the ranks of Fisher per unit of cost, so
            that the deterministic masks start as the one-shot Taylor selection (Molchanov et al. 2019; Kwon et al.
            2022). Needs a dense phase (``dense_steps > 0`` or ``pruner.set_phase("dense")``); see
            :mod:`lightning_prune.importance`.
        importance_spread: how far the least important unit starts below the most important one, in the gate's
            parameter (``None``: the gate's default: hard-concrete ``log α`` 3.0, STE score fraction 0.9,
            polarization γ fraction 0.01).
    """

    target_sparsity: float = 0.5
    structures: tuple[str, ...] = ("heads", "ffn")
    target: str = "params"
    warmup_steps: int = 0
    uniform: bool = False
    keep_units: dict[str, int] = field(default_factory=dict)
    match_target: bool = True
    gate_lr: float = 0.1
    lagrangian_lr: float | None = None
    flops_seq_len: int = 512
    export_rtol: float = 1e-4
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    distill_hidden_weight: float = 0.0
    distill_teacher: str = "ungated"
    multiple_of: dict[str, int] = field(default_factory=dict)
    init_from_importance: bool = False
    importance_spread: float | None = None

    method_name = "base"
    gate_kind = "hard_concrete"
    #: Fields that may still change after ``attach`` on the pruner's own copy (``pruner.config``): every method reads
    #: them when it uses them (the masks' exact-target correction, the export tolerance), never at attach only.
    live_fields: ClassVar[tuple[str, ...]] = ("match_target", "export_rtol")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_types_checked", False):
            cls.__post_init__ = _types_checked_first(own)  # a subclass's own checks read typed values

    def __setattr__(self, name: str, value: Any) -> None:
        lock = self.__dict__.get("_attached_as")
        if lock is not None and name in self.__dataclass_fields__:
            self._check_edit(lock, name, value)
        object.__setattr__(self, name, value)

    def _check_edit(self, lock: str, name: str, value: Any) -> None:
        """Edits after ``attach``: the user's object is read-only (``attach`` copied it: an edit would have no
        effect); the pruner's copy takes only :attr:`live_fields` (type-checked) and no-op assignments."""
        current = getattr(self, name)
        if value is current or (type(value) is type(current) and value == current):
            return
        cls = type(self).__name__
        if lock == "user":
            raise AttachStateError(
                f"This {cls} was given to attach(), which took its own copy, so setting `{name}`={value!r} here would "
                f"have no effect on the pruner (it keeps {current!r}). Make a new config, e.g. "
                f"`dataclasses.replace(config, {name}=...)`, and attach it to a fresh model (or after "
                "`pruner.detach()`)."
            )
        if name not in self.live_fields:
            raise AttachStateError(
                f"`pruner.config.{name}` cannot change after attach() (it keeps {current!r}; got {value!r}): the "
                f"gates, regulariser and schedule were built from it. Only {list(self.live_fields)} may change. Detach "
                f"(`pruner.detach()`) and attach again with `dataclasses.replace(pruner.config, {name}=...)`."
            )
        kind = str(self.__dataclass_fields__[name].type).split("|")[0].strip()
        _checked_value(self, name, kind, False, value)

    def _lock(self, owner: str) -> None:
        """Mark this config as given to ``attach`` (``owner="user"``) or as the pruner's own copy (``"pruner"``)."""
        object.__setattr__(self, "_attached_as", owner)

    def __post_init__(self) -> None:
        check_field_types(self)  # strings, bools, NaN, None where a number or names are expected
        t = self.target_sparsity
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or not 0.0 <= t < 1.0:
            raise PruningConfigError(
                f"`target_sparsity` must be a number in [0, 1) (the fraction of prunable parameters to remove), "
                f"got {t!r}. HINT: 0.4 removes 40%; a percentage such as 40 must be divided by 100."
            )
        if not self.structures:
            raise PruningConfigError(
                "`structures` is empty: name at least one structure to gate, e.g. ('heads', 'ffn')."
            )
        if len(set(self.structures)) != len(self.structures):
            raise PruningConfigError(f"`structures` lists a name twice: {self.structures}. Name each structure once.")
        if self.target not in ("params", "flops"):
            raise PruningConfigError(
                f"`target` must be 'params' or 'flops', got {self.target!r}. HINT: 'params' counts prunable "
                "parameters, 'flops' their FLOPs per token."
            )
        if self.warmup_steps < 0:
            raise PruningConfigError(
                f"`warmup_steps` must be a non-negative int, got {self.warmup_steps!r}. HINT: 0 applies the full "
                "target from the first pruning step."
            )
        for name in ("gate_lr", "lagrangian_lr", "export_rtol", "importance_spread"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                default = _default_of(self, name)
                raise PruningConfigError(
                    f"`{name}` must be positive, got {value!r}. HINT: "
                    + (
                        f"it is a learning rate (the default is {default!r}); to stop the gates, use "
                        "`freeze_after_steps` or `pruner.set_phase('frozen')` instead of a zero or negative rate."
                        if name.endswith("_lr")
                        else "leave it None for the gate's default, or pass how far the least important unit starts "
                        "below the most important one."
                        if name == "importance_spread"
                        else f"it is a relative tolerance (the default is {default!r})."
                    )
                )
        for name in ("distill_weight", "distill_hidden_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PruningConfigError(
                    f"`{name}` must be a non-negative number (0 turns it off), got {value!r}. HINT: the teacher is "
                    "the model itself with gates and adapters off; 0.1 to 1 are typical weights."
                )
        if self.distill_teacher not in DISTILL_TEACHERS:
            raise PruningConfigError(
                f"`distill_teacher` must be one of {DISTILL_TEACHERS}, got {self.distill_teacher!r}: 'ungated' is the "
                "model with gates and adapters off, 'prune_start' the trainable weights as the prune phase began."
            )
        temp = self.distill_temperature
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp <= 0:
            raise PruningConfigError(f"`distill_temperature` must be a positive number (e.g. 2.0), got {temp!r}.")
        if self.flops_seq_len < 1:
            raise PruningConfigError(
                f"`flops_seq_len` must be >= 1, got {self.flops_seq_len}. HINT: the sequence length of your training "
                "data (the default is 512)."
            )
        self._check_per_structure("keep_units", 0, "a non-negative int (units to keep per row)")
        self._check_per_structure("multiple_of", 1, "a positive int (e.g. 8, 32, 64)")

    def _check_per_structure(self, field_name: str, minimum: int, what: str) -> None:
        """A ``{structure: int}`` field: every key a gated structure, every value an int ``>= minimum``."""
        for key, value in dict(getattr(self, field_name)).items():
            if key not in self.structures:
                raise PruningConfigError(
                    f"`{field_name}` names {key!r}, which is not in `structures` {self.structures}; add it there."
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise PruningConfigError(f"`{field_name}[{key!r}]` must be {what}, got {value!r}.")

    # -- what a method decides -------------------------------------------------------------------
    def gate_kwargs(self, spec: StructureSpec) -> dict[str, Any]:
        """Keyword arguments of the gate for ``spec``; methods override to pass their hyper-parameters."""
        return {}

    def build_gate(self, spec: StructureSpec) -> Gate:
        return gate_class(self.gate_kind)(spec.rows, spec.units, **self.gate_kwargs(spec))

    def build_gates(self, specs: dict[str, StructureSpec]) -> dict[str, Gate]:
        """The gates of all structures; override when one module decides several structures at once (ATP's
        generator), otherwise one :meth:`build_gate` per structure."""
        return {name: self.build_gate(spec) for name, spec in specs.items()}

    def install_hooks(self, pruner: Pruner) -> list[tuple[str, nn.Module, Any]]:
        """Extra forward hooks of the method, as ``(module path, module, handle)``; the adapter's hooks are
        installed already. The pruner removes them on ``detach`` and checks the modules stay in place."""
        return []

    def adapter_hook_structures(self, structures: set[str]) -> set[str]:
        """The structures whose masks the adapter's own hooks apply (all by default); a method that applies some
        masks in its own hooks (PAT's shared hidden mask, after its HSMs) leaves them out."""
        return structures

    def training_masks(self, pruner: Pruner) -> dict[str, torch.Tensor] | None:
        """The masks of a training forward in the prune phase, when the method chooses them itself (``None``: each
        gate samples its own, the default). :class:`~lightning_prune.methods.gradual.GradualConfig` returns the
        exact-target selection by score with a straight-through path to the scores."""
        return None

    def on_freeze(self, pruner: Pruner) -> None:
        """Called once when the masks freeze (the ``prune`` → ``frozen`` transition of the integrations and of
        :meth:`Pruner.set_phase`); methods whose frozen mask is not already at the target correct it here."""

    def build_compact(
        self, pruner: Pruner, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The compact model from the merged state and final masks: the adapter's by default. A method with
        trainable modules of its own (PAT's HSMs) folds them into ``state`` first; the export's equivalence check
        then guards the result as for any other method."""
        return pruner.adapter.build_compact(state, masks)

    def build_regularizer(self, pruner: Pruner) -> nn.Module:
        """A module whose ``forward(pruner) -> dict[str, Tensor]`` returns the named penalty terms."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Every field (JSON-ready: ``structures`` as a list) plus ``"method"``; :meth:`from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["structures"] = list(self.structures)
        out["method"] = self.method_name
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PruningConfig:
        """The config :meth:`to_dict` described (also after a JSON round trip).

        ``PruningConfig.from_dict(d)`` builds the config class registered for ``d["method"]``; on a method's own
        class (``L0Config.from_dict(d)``) the method, when given, must be that class's.

        Raises:
            PruningConfigError: an unknown or mismatching method, or a dict without one given to the base class.
        """
        values = dict(values)
        method = values.pop("method", None)
        target = cls
        if method is not None:
            registered = method_config_class(method)
            if cls is PruningConfig:
                target = registered
            elif registered is not cls:
                raise PruningConfigError(
                    f"This dict describes a {method!r} config ({registered.__name__}), not a {cls.__name__}. Use "
                    f"{registered.__name__}.from_dict(...) or PruningConfig.from_dict(...)."
                )
        elif cls is PruningConfig:
            raise PruningConfigError(
                "The dict has no 'method' key, so PruningConfig.from_dict cannot tell which config to build; call the "
                "method's class, e.g. lightning_prune.L0Config.from_dict(d)."
            )
        if isinstance(values.get("structures"), list):
            values["structures"] = tuple(values["structures"])
        return target(**values)


def positive_float(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise PruningConfigError(
            f"`{name}` must be a positive number, got {value!r}. HINT: leave it unset for the method's default."
        )


def zero_with_graph(params) -> torch.Tensor:
    """``0 · Σ p``: a zero that still touches every parameter, so DDP sees them all used."""
    total = None
    for p in params:
        term = p.sum() * 0.0
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
