"""The :class:`Pruner` and :func:`attach`: resolve the adapter, validate the config against the model, build the
gates and install the hooks; :meth:`Pruner.detach` undoes it. The rest of the pruner is in the modules beside this
one: the masks (:mod:`.masks`), training (:mod:`.training`), optimizer groups (:mod:`.param_groups`), statistics
(:mod:`.stats`), export (:mod:`.export`) and the attach-state checks (:mod:`.checks`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from lightning_prune.adapters import ModelAdapter, resolve_adapter
from lightning_prune.adapters.base import check_prunable_weights
from lightning_prune.contracts import GateUpdateCheck, check_example_inputs_run, check_has_layers, check_not_compiled
from lightning_prune.cost import CostModel
from lightning_prune.distill import SelfDistiller
from lightning_prune.errors import AttachStateError, PruningConfigError, UnsupportedModelError
from lightning_prune.export.merge import unwrap_model
from lightning_prune.export.report import ExportReport
from lightning_prune.importance import ImportanceScores
from lightning_prune.methods.base import PruningConfig
from lightning_prune.pruner.checks import AttachChecksMixin, _check_importance_init
from lightning_prune.pruner.export import ExportMixin
from lightning_prune.pruner.masks import MasksMixin
from lightning_prune.pruner.param_groups import ParamGroupsMixin
from lightning_prune.pruner.state import STATE_ATTRIBUTE, PruningState
from lightning_prune.pruner.stats import StatsMixin
from lightning_prune.pruner.training import TrainingMixin
from lightning_prune.selection import validate_multiple_of
from lightning_prune.structures import PER_LAYER_EXPORT_STRUCTURES, STRUCTURE_DOCS, StructureSpec

log = logging.getLogger("lightning_prune")


class Pruner(MasksMixin, TrainingMixin, ParamGroupsMixin, StatsMixin, ExportMixin, AttachChecksMixin):
    """Gates attached to a model, with the penalty, optimizer groups and export that go with them.

    Prefer :func:`attach` to calling this directly. Apply peft's ``get_peft_model`` **before**
    attaching: the gates' hooks sit on the LoRA-wrapped modules so that exports fold the merged weights.

    Args:
        model: a supported model (e.g. ``LlamaForCausalLM``), optionally wrapped by peft.
        config: a method config such as :class:`~lightning_prune.L0Config`.
        adapter: force a registered adapter by name instead of resolving it from the model.
    """

    def __init__(
        self, model: nn.Module, config: PruningConfig, adapter: str | None = None, example_inputs: Any = None
    ) -> None:
        if not isinstance(config, PruningConfig):
            raise PruningConfigError(
                f"`config` must be a PruningConfig such as lightning_prune.L0Config(...), got {type(config).__name__}."
            )
        if isinstance(getattr(model, STATE_ATTRIBUTE, None), PruningState):
            raise AttachStateError(
                f"This model already has gates attached (`model.{STATE_ATTRIBUTE}`). Call `pruner.detach()` on the "
                "existing pruner first, or attach to a fresh model."
            )
        check_not_compiled(model)
        user_config, config = config, copy.deepcopy(config)  # the pruner's own copy: see `attach`
        self.model = model
        self.config = config
        self.hf_model = unwrap_model(model)
        check_prunable_weights(model)
        check_has_layers(self.hf_model)
        if adapter is None and example_inputs is not None:  # plain CNN/MLP: trace it unless a family adapter matches
            try:
                adapter_cls = resolve_adapter(self.hf_model)
            except UnsupportedModelError:
                adapter_cls = resolve_adapter(self.hf_model, "dependency_graph")
        else:
            adapter_cls = resolve_adapter(self.hf_model, adapter)
        if example_inputs is not None and not getattr(adapter_cls, "accepts_example_inputs", False):
            raise PruningConfigError(
                f"`example_inputs` was given but the {adapter_cls.name} adapter takes none (only tracing adapters such "
                "as dependency_graph do). Drop the argument."
            )
        if example_inputs is not None:  # wrong shapes fail here with the model's own error, not inside a tracer
            check_example_inputs_run(self.hf_model, example_inputs)
        extra = {"example_inputs": example_inputs} if getattr(adapter_cls, "accepts_example_inputs", False) else {}
        self.adapter: ModelAdapter = adapter_cls(self.hf_model, **extra)
        available = self.adapter.structures()
        refused = {s: why for s, why in self.adapter.refused_structures().items() if s in config.structures}
        if refused:
            raise UnsupportedModelError(
                f"The {self.adapter.name} adapter cannot prune {list(refused)} of {type(self.hf_model).__name__}: "
                + " ".join(dict.fromkeys(refused.values()))
            )
        unknown = [s for s in config.structures if s not in available]
        if unknown:
            described = "; ".join(f"{k}: {STRUCTURE_DOCS.get(k, '')}" for k in available)
            known = "; ".join(f"{k}: {STRUCTURE_DOCS[k]}" for k in unknown if k in STRUCTURE_DOCS)
            raise PruningConfigError(
                f"Unknown structure(s) {unknown} for the {self.adapter.name} adapter"
                f"{f' ({known})' if known else ''}. Available: {list(available)} ({described})."
            )
        self.specs: dict[str, StructureSpec] = {s: available[s] for s in config.structures}
        empty = {name: (spec.rows, spec.units) for name, spec in self.specs.items() if spec.rows < 1 or spec.units < 1}
        if empty:
            raise UnsupportedModelError(
                f"{type(self.hf_model).__name__} has nothing to gate for {list(empty)} ((rows, units per row): "
                f"{empty}): the model has no such units. Check its config (e.g. `intermediate_size`, "
                "`num_hidden_layers`), or leave these structures out of `structures`."
            )
        per_layer_only = sorted(PER_LAYER_EXPORT_STRUCTURES & set(self.specs))
        if per_layer_only and (config.uniform or getattr(config, "target_architecture", None)):
            log.warning(
                "lightning-prune: uniform=True (or a target architecture) keeps the same number of units in every "
                "layer, but %s exports need the "
                "per-layer modeling file anyway (a standard config cannot describe pruned head dims: a subset of the "
                "rotary frequencies and the original attention scaling). The export loads with load_compact or "
                "from_pretrained(..., trust_remote_code=True).",
                per_layer_only,
            )
        for name, count in config.keep_units.items():
            if count > self.specs[name].units:
                gqa = " (`heads` counts key/value groups, not query heads)" if name == "heads" else ""
                raise PruningConfigError(
                    f"`keep_units[{name!r}]`={count} (or `target_architecture[{name!r}]`) exceeds the "
                    f"{self.specs[name].units} units of a row of {name!r}{gqa}. Choose at most that many."
                )
        validate_multiple_of(config.multiple_of, self.specs, config.keep_units)
        self.cost = CostModel(self.adapter.cost_terms(config.flops_seq_len))
        self._check_target_reachable()
        #: The self-distillation teacher pass (``None`` unless ``config.distill_weight > 0``: then no extra forward).
        self.distiller: SelfDistiller | None = SelfDistiller(self) if config.distill_weight > 0 else None
        # Built on the CPU (whatever default device is in force), then moved to the model's device; a model on the
        # meta device (weights to be loaded later) gets real gates on the CPU: `model.to_empty(device=...)` then
        # carries their values along (see `PruningState._apply`) and a checkpoint load replaces them.
        with torch.device("cpu"):
            gates = config.build_gates(self.specs)
            self.state = PruningState(gates, config.build_regularizer(self))
            if config.init_from_importance:
                _check_importance_init(gates, config)
                self.state.importance = ImportanceScores(self.specs)
        device = next((p.device for p in self.hf_model.parameters()), torch.device("cpu"))
        self.state.to(device if device.type != "meta" else torch.device("cpu"))
        model.add_module(STATE_ATTRIBUTE, self.state)
        self._lean = all(gate.exact_zero_gradient for gate in gates.values())
        self.phase = "prune"
        self._masks: dict[str, torch.Tensor] | None = None
        self._cache: dict[str, Any] = {}
        self._derived: dict[str, Any] = {}  # key -> compute(): values derived from the masks, see `derive`
        self._deterministic_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self.last_terms: dict[str, float] = {}
        self.last_report: ExportReport | None = None
        #: When not ``None``, training-mode masks are drawn from an RNG seeded with this value (the global RNG
        #: state is saved and restored around the draw), so samples are reproducible across a resume and equal on
        #: every rank. ``PruningCallback`` sets it from ``(seed, global_step, micro-batch)`` before each batch.
        self.sample_seed: int | None = None
        #: Where the unit masks act: ``"merged"`` (on the output of the merged ``W + BA`` path: what export folds,
        #: used in eval and export) or ``"frozen"`` (only on the frozen base path ``W x``; the LoRA path passes
        #: unmasked: ATP's LoRA update, see :mod:`lightning_prune.methods.atp`).
        self.mask_path = "merged"
        #: ``None``: training-mode forwards sample masks, eval-mode forwards use deterministic ones. ``True`` /
        #: ``False`` force sampled / deterministic masks whatever the model's mode (ATP's generator / LoRA steps).
        self.mask_sampling: bool | None = None
        root = self.adapter.root_module()
        self._handles = [root.register_forward_pre_hook(self._refresh)]
        self._handles += self._install_mask_hooks()
        if self.distiller is not None:
            self._handles += self.distiller.install()
        user_config._lock("user")  # later edits to the user's object would not reach the pruner: refused loudly
        config._lock("pruner")
        #: Gate-update check of the first steps (see `_check_gates_updated`); `None` once it has concluded.
        self._update_check: GateUpdateCheck | None = GateUpdateCheck(self)
        log.info(
            "lightning-prune: attached %s gates on %s to %s (%d prunable parameters, target sparsity %.2f of %s)",
            config.gate_kind,
            list(self.specs),
            type(self.hf_model).__name__,
            int(self.cost.dense_prunable_params),
            config.target_sparsity,
            config.target,
        )

    @property
    def gates(self) -> nn.ModuleDict:
        return self.state.gates

    def detach(self) -> nn.Module:
        """Remove the hooks and the gates from the model; returns the model as it was before ``attach``."""
        self.stop_update_check()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.model, STATE_ATTRIBUTE, None) is self.state:
            delattr(self.model, STATE_ATTRIBUTE)
        return self.model


def attach(model: nn.Module, config: PruningConfig, adapter: str | None = None, example_inputs: Any = None) -> Pruner:
    """Attach trainable gates to ``model`` according to ``config`` and return the :class:`Pruner`.

    Args:
        model: a supported model (Llama/Mistral/Qwen2/Qwen3 in this release), optionally wrapped by peft
            (wrap first, then attach).
        config: the method config, e.g. ``L0Config(target_sparsity=0.5)``.
        adapter: name of a registered adapter to use instead of resolving one from the model.
        example_inputs: inputs for adapters that trace the model (the ``dependency_graph`` adapter for plain
            CNNs/MLPs): a tensor or tuple of tensors the model accepts positionally.

    The config is fixed at attach, the same way for every method: the pruner keeps its own copy
    (``pruner.config``), and the object passed in becomes read-only: setting one of its fields raises
    :class:`AttachStateError` instead of being silently ignored (use ``dataclasses.replace(config, ...)`` for a
    variant). On ``pruner.config`` only the fields read at use time (``PruningConfig.live_fields``:
    ``match_target``, ``export_rtol``) may change; any other field raises, since the gates, the regulariser and the
    schedule were built from it.

    Raises:
        UnsupportedModelError: no adapter handles the model (the message lists the known ones), the model is a
            ``torch.compile`` wrapper, or it has no layers.
        PruningConfigError: the config asks for something the model cannot do, or ``example_inputs`` do not run
            through the model.
    """
    return Pruner(model, config, adapter=adapter, example_inputs=example_inputs)
