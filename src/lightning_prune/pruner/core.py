"""The plain-PyTorch API: :func:`attach` gates to a model and get a :class:`Pruner` back.

Example::

    import lightning_prune as lp

    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=("heads", "ffn")))
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=2e-5, weight_decay=0.01))
    for batch in loader:
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()          # clamps the gates, advances the target schedule
        optimizer.zero_grad()
    compact = pruner.export()  # LoRA merged, gates folded, pruned structure removed, checked
    pruner.save_compact("compact/")
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.adapters import ModelAdapter, resolve_adapter
from lightning_prune.adapters.base import check_prunable_weights
from lightning_prune.contracts import (
    GateUpdateCheck,
    check_example_inputs_run,
    check_has_layers,
    check_not_compiled,
    check_optimizer_holds_gates,
)
from lightning_prune.cost import CostModel
from lightning_prune.distill import SelfDistiller
from lightning_prune.errors import AttachStateError, NonFiniteError, PruningConfigError, UnsupportedModelError
from lightning_prune.export.io import DEFAULT_MAX_SHARD_SIZE
from lightning_prune.export.merge import MergedWeights, unwrap_model
from lightning_prune.export.report import REPORT_ATTRIBUTE, ExportReport, count_parameters
from lightning_prune.export.verify import verify_export
from lightning_prune.gates import Gate
from lightning_prune.importance import ImportanceScores, global_ranks, importance_per_cost, unit_costs
from lightning_prune.methods.base import PruningConfig, zero_with_graph
from lightning_prune.ops import mask_mul
from lightning_prune.selection import select_masks, validate_multiple_of
from lightning_prune.structures import PER_LAYER_EXPORT_STRUCTURES, STRUCTURE_DOCS, StructureSpec

log = logging.getLogger("lightning_prune")

#: Name of the child module that holds the gates, multipliers and schedule state inside the model.
STATE_ATTRIBUTE = "pruning_gates"

PHASES = ("dense", "prune", "frozen")


class PruningState(nn.Module):
    """Everything the pruner trains or must resume: gates, regulariser (λ), pruning-step counter.

    It is attached to the user's model as a child module (``model.pruning_gates``) so that DDP/FSDP
    all-reduce the gate gradients, and a Lightning checkpoint carries it in the model's state dict.
    Its floating-point tensors stay in fp32 whatever ``model.to(dtype)`` or a precision plugin does.

    A model that runs its own children in order (an ``nn.Sequential``, an ``nn.ModuleList`` / ``nn.ModuleDict``
    subclass iterating itself, ``for m in self.children()``) also calls this module: its forward is the identity,
    so such a model computes what it computed before attach. Being a registered child is what keeps the gates in
    ``parameters()`` (DDP, optimizers), ``state_dict()`` (checkpoints) and ``.to()``; the price is that an attached
    ``nn.Sequential`` counts it in ``len(model)`` and ``model[-1]`` (``detach()`` removes it).
    """

    def __init__(self, gates: dict[str, Gate], regularizer: nn.Module) -> None:
        super().__init__()
        self.gates = nn.ModuleDict(gates)
        self.regularizer = regularizer
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, *inputs: Any) -> Any:
        """The identity (one input is returned as is, several as a tuple): see the class docstring."""
        return inputs[0] if len(inputs) == 1 else inputs

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Every conversion keeps the values: fp32 whatever the dtype asked for, and ``model.to_empty(device=...)``
        (which materialises a model built on the meta device with uninitialised memory) carries the gates and
        multipliers over instead of wiping them. A checkpoint loaded afterwards still replaces them."""

        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t.is_floating_point() and out.is_floating_point() and out.dtype != torch.float32:
                out = out.float()
            return out

        tensors = dict(self.named_parameters()) | dict(self.named_buffers())
        saved = {name: t.detach().clone() for name, t in tensors.items() if not t.is_meta}
        out = super()._apply(keep_fp32, recurse)
        with torch.no_grad():
            for name, t in (dict(self.named_parameters()) | dict(self.named_buffers())).items():
                if name in saved and not t.is_meta and t.shape == saved[name].shape:
                    t.copy_(saved[name])
        return out


class Pruner:
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

    # -- masks ---------------------------------------------------------------------------------------
    @property
    def gates(self) -> nn.ModuleDict:
        return self.state.gates

    def _install_mask_hooks(self) -> list[RemovableHandle]:
        """The adapter's and the method's mask hooks (closures over this pruner); records what they hook."""
        self._derived = {}
        hooked = self.adapter.install_hooks(self, self.config.adapter_hook_structures(set(self.specs)))
        hooked += self.config.install_hooks(self)  # a method's own hooks (none by default)
        self._hooked = [(path, module) for path, module, _ in hooked]
        self._mask_handles = [handle for _, _, handle in hooked]
        return self._mask_handles

    def _rehook_copy(self) -> None:
        """A deep copy of the model carries the original's hook *functions* (``copy`` shares functions), which
        would read the original pruner's masks. The copied pruner replaces them with its own before the copy's
        first forward runs a single block."""
        mask_handles = {id(h) for h in self._mask_handles}
        for handle in self._mask_handles:
            handle.remove()
        self._handles = [h for h in self._handles if id(h) not in mask_handles] + self._install_mask_hooks()

    @torch.compiler.disable  # Python bookkeeping and RNG forks: run eagerly, hand the masks to compiled graphs
    def _refresh(self, module: nn.Module, args: Any) -> None:
        if self.__dict__.pop("_is_copy", False):
            self._rehook_copy()
        self._cache.clear()
        if self.phase == "dense":
            importance = self.importance
            probe = importance is not None and not importance.done and torch.is_grad_enabled()
            # all-ones masks that require grad: the dense forward is unchanged, the backward fills the Fisher sums
            self._masks = importance.probe_masks() if probe and module.training else None
        elif self.phase == "prune" and (module.training if self.mask_sampling is None else self.mask_sampling):
            self._masks = self._sample_masks()
        else:
            self._masks = self.deterministic_masks()
        # Everything derived from the masks is computed here, at the root module's pre-hook: outside any
        # checkpointed block, so gradient checkpointing's recomputation runs exactly the ops of the first pass.
        for key in self._derived:
            self.cached(key)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out this forward pass's masks and derived values (non-leaf tensors that
        ``copy.deepcopy`` cannot copy): a copied model samples its own at its next forward."""
        state = self.__dict__.copy()
        state.update(_cache={}, _masks=None, _deterministic_cache=None, _update_check=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._is_copy = True  # its modules still hold the original's hook closures: see `_rehook_copy`

    def _sample_masks(self) -> dict[str, torch.Tensor]:
        if self.sample_seed is None:
            return {name: gate.sample() for name, gate in self.gates.items()}
        device = self.state.step.device
        cuda = [device.index] if device.type == "cuda" else []  # a tensor's CUDA device always has an index
        with torch.random.fork_rng(devices=cuda):  # the global CPU (and this GPU's) RNG state is restored after
            torch.random.default_generator.manual_seed(self.sample_seed)
            if cuda:
                torch.cuda.default_generators[cuda[0]].manual_seed(self.sample_seed)
            return {name: gate.sample() for name, gate in self.gates.items()}

    def mask(self, structure: str) -> torch.Tensor | None:
        """The mask of ``structure`` for the current forward pass (``None`` in the dense phase)."""
        if self._masks is None:
            return None
        return self._masks.get(structure)

    def multiply(self, x: torch.Tensor, mask: torch.Tensor, overwritten: bool = False) -> torch.Tensor:
        """``x * mask`` for the hooks: the memory-lean :func:`~lightning_prune.ops.mask_mul` when every gate
        kind has an exactly-zero gradient at mask 0, the plain product otherwise.

        ``overwritten=True`` says the result is modified in place afterwards (``nn.ReLU(inplace=True)``,
        ``out += identity``): the op then saves ``x`` instead of its result (the plain product always does)."""
        if self._lean or self.phase == "dense":  # dense: all-ones probe masks, where mask_mul is exact
            return mask_mul(x, mask, keep_input=overwritten)
        return x * mask.to(dtype=x.dtype, device=x.device)

    def derive(self, key: str, compute) -> None:
        """Register a value derived from the masks (``compute()``), computed once per forward pass before the
        model runs; hooks read it with :meth:`cached`."""
        self._derived[key] = compute

    def cached(self, key: str, compute=None) -> Any:
        """The value ``key`` for this forward pass: registered with :meth:`derive`, or computed by ``compute`` on
        first use (lazily: inside a checkpointed block prefer :meth:`derive`)."""
        if key not in self._cache:
            self._cache[key] = (compute or self._derived[key])()
        return self._cache[key]

    def keep_counts(self, structure: str) -> torch.Tensor:
        """Units kept per row by the deterministic mask of ``structure``.

        The learned count is the gate's :meth:`~lightning_prune.gates.Gate.learned_counts`: by default the expected
        number of kept units, ``round(Σ P(kept))`` per row (CoFi/FLOP; polarization: units above the valley);
        ``uniform=True`` uses the mean over layers in every layer; ``keep_units`` fixes it.
        """
        spec, gate = self.specs[structure], self.gates[structure]
        if structure in self.config.keep_units:
            return torch.full((spec.rows,), self.config.keep_units[structure], dtype=torch.long)
        expected = gate.learned_counts().detach().float()
        if self.config.uniform and spec.per_layer:
            expected = expected.mean().expand(spec.rows)
        return expected.round().long()

    @torch.no_grad()
    def deterministic_masks(self) -> dict[str, torch.Tensor]:
        """Binary eval-mode masks: the top :meth:`keep_counts` units per row by gate score, rounded to
        ``multiple_of`` and, with ``match_target``, corrected to meet the current target exactly
        (:func:`lightning_prune.selection.select_masks`).

        They depend on the gate parameters only (never on a batch) and are cached until those change.
        """
        key = tuple((name, p._version, p.data_ptr()) for name, p in self.state.named_parameters())
        key += (self.config.uniform, self.config.match_target, self.phase, self.current_target())
        key += tuple(sorted(self.config.keep_units.items())) + tuple(sorted(self.config.multiple_of.items()))
        if self._deterministic_cache is not None and self._deterministic_cache[0] == key:
            return self._deterministic_cache[1]
        start = {name: gate.deterministic(self.keep_counts(name)) for name, gate in self.gates.items()}
        scores = {name: gate.score().detach() for name, gate in self.gates.items()}
        match = self.config.match_target and self.phase != "dense"
        options = dict(
            metric=self.config.target,
            match_target=match,
            uniform=self.config.uniform,
            multiple_of=self.config.multiple_of,
        )
        masks = select_masks(
            start, scores, self.specs, self.cost, self.current_target(), fixed=set(self.config.keep_units), **options
        )
        if self.config.uniform:  # a shape the family's standard config can express
            adjusted = self.adapter.uniform_masks(masks, scores, set(self.config.keep_units))
            changed = {name for name in masks if adjusted[name] is not masks[name]}
            if changed and match:  # the adapter moved some counts: the others meet the target around them
                fixed = set(self.config.keep_units) | changed | ({"heads"} if "hidden" in changed else set())
                adjusted = select_masks(
                    adjusted, scores, self.specs, self.cost, self.current_target(), fixed=fixed, **options
                )
            masks = adjusted
        masks = {name: self.gates[name].eval_values(m) for name, m in masks.items()}  # e.g. γ · binary (polarization)
        self._deterministic_cache = (key, masks)
        return masks

    # -- training ------------------------------------------------------------------------------------
    @property
    def pruning_step(self) -> int:
        """Optimizer steps taken in the pruning phase (drives the target warm-up)."""
        return int(self.state.step.item())

    @pruning_step.setter
    def pruning_step(self, value: int) -> None:
        self.state.step.fill_(int(value))

    def expected_sparsity(self, target: str | None = None) -> torch.Tensor:
        """Differentiable expected fraction of prunable parameters (or FLOPs) removed under the gates."""
        probs = {name: gate.keep_probability() for name, gate in self.gates.items()}
        return self.cost.sparsity(probs, target or self.config.target)

    def penalty(self) -> torch.Tensor:
        """The method's regularisers (e.g. the Lagrangian term) to add to the task loss.

        Raises:
            NonFiniteError: a gate parameter or the penalty is NaN/inf (the message names the step).
            AttachStateError: the model was changed after ``attach`` (e.g. LoRA applied afterwards).
        """
        self._check_attached()
        if self.phase != "prune":
            return zero_with_graph(p for p in self.state.parameters() if p.requires_grad)
        self._check_finite_parameters()
        terms = self.state.regularizer(self)
        if self.distiller is not None:
            terms.update(self.distiller.pop_terms())
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise NonFiniteError(
                f"The pruning penalty is {total.item()} at pruning step {self.pruning_step} "
                f"({ {k: float(v) for k, v in terms.items()} }). "
                "Lower `gate_lr`/`lagrangian_lr` or check the loss scale."
            )
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        if self.distiller is not None and "distill" in terms:
            self.last_terms.update(self.distiller.components)
        return total

    def check_loss(self, loss: torch.Tensor, what: str = "task loss", step: int | None = None) -> None:
        """Raise :class:`NonFiniteError` if ``loss`` is NaN/inf, naming the step, before it reaches the gates.

        The training integrations call it on the user's loss every step, so a diverging run stops with the
        last checkpoint intact instead of training (and later exporting) NaN gates.
        """
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss.detach()).all()):
            where = (
                f"global step {step} (pruning step {self.pruning_step})"
                if step is not None
                else (f"pruning step {self.pruning_step}")
            )
            raise NonFiniteError(
                f"The {what} is {loss.detach().float().flatten()[0].item()} at {where}; training stopped before it "
                "updated the gates. Lower the learning rate, check the batch for bad values, or enable gradient "
                "clipping, then resume from the last checkpoint."
            )

    def _check_finite_parameters(self) -> None:
        for name, p in self.state.named_parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteError(
                    f"Gate parameter `{name}` holds NaN/inf at pruning step {self.pruning_step}. The model was not "
                    "exported. Resume from the last checkpoint with a lower `gate_lr` or check the task loss for NaN."
                )

    @torch.no_grad()
    def step(self) -> None:
        """Call after each ``optimizer.step()``: clamps the gates and advances the target schedule.

        In the first steps it also checks that the optimizer updates the gates and multipliers (see
        :class:`~lightning_prune.contracts.GateUpdateCheck`).

        Raises:
            TrainingContractError: the gates received gradients but the optimizer did not update them (they are
                not in its parameter groups); the message shows how to build the optimizer.
        """
        check = self._update_check
        if check is not None and check.before_step():
            self.stop_update_check()
        for gate in self.gates.values():
            gate.post_step_()
        if self._update_check is not None:
            self._update_check.after_step()
        if self.phase == "prune":
            self.state.step.add_(1)

    def stop_update_check(self) -> None:
        """Stop checking that the optimizer updates the gates: an integration that builds the optimizer groups itself
        (Lightning, HF Trainer) has verified them already."""
        if self._update_check is not None:
            self._update_check.close()
            self._update_check = None

    def hook_optimizer(self, optimizer: torch.optim.Optimizer):
        """Call :meth:`step` automatically after every ``optimizer.step()``; returns the hook handle.

        Raises:
            TrainingContractError: trainable gates or multipliers are in none of the optimizer's groups.
        """
        check_optimizer_holds_gates(optimizer, self)
        return optimizer.register_step_post_hook(lambda *_: self.step())

    def set_phase(self, phase: str) -> None:
        """``"dense"`` (masks off), ``"prune"`` (masks sampled in training), ``"frozen"`` (deterministic masks).

        With ``config.init_from_importance``, the dense phase accumulates importance scores and leaving it
        initialises the gates from them (:meth:`init_gates_from_importance_`, once).
        """
        if phase not in PHASES:
            raise PruningConfigError(f"`phase` must be one of {PHASES}, got {phase!r}.")
        if phase != "dense":
            self.maybe_init_gates_from_importance_()
        if phase == "frozen" and self.phase == "prune":
            self.config.on_freeze(self)
        self.phase = phase
        for p in self.state.gates.parameters():
            p.requires_grad_(phase == "prune")

    # -- importance init (see lightning_prune.importance) ---------------------------------------------------------
    @property
    def importance(self) -> ImportanceScores | None:
        """The Fisher sums of the dense phase (``None`` unless ``config.init_from_importance``)."""
        return getattr(self.state, "importance", None)

    @torch.no_grad()
    def init_gates_from_importance_(self, spread: float | None = None) -> dict[str, torch.Tensor]:
        """Set every gate from the importance accumulated in the dense phase; returns the ranks in ``[0, 1]``.

        Units are ranked globally by Fisher per unit of cost (:func:`~lightning_prune.importance.global_ranks`),
        and each gate maps the rank to its parameters (:meth:`~lightning_prune.gates.Gate.init_from_ranks_`), so the
        deterministic masks at any target are the one-shot selection
        (:func:`~lightning_prune.importance.importance_masks`). Marks the scores as applied: a later transition
        (or a resumed run) does not initialise again.

        Raises:
            AttachStateError: no scores were accumulated (``init_from_importance=False``, or no training backward
                ran in the dense phase).
        """
        importance = self.importance
        if importance is None or int(importance.batches) == 0:
            raise AttachStateError(
                "No importance scores to initialise the gates from: "
                + (
                    "the config has `init_from_importance=False`."
                    if importance is None
                    else "no training backward ran in the dense phase. Call `pruner.set_phase('dense')` and train "
                    "(model in train mode, gradients on) before initialising."
                )
            )
        ranks = global_ranks(importance_per_cost(importance.synced(), unit_costs(self)))
        for name, gate in self.gates.items():
            step = spread or self.config.importance_spread or gate.default_importance_spread
            gate.init_from_ranks_(ranks[name], float(step))
        importance.applied.fill_(1)
        log.info(
            "lightning-prune: gates initialised from the importance of %d dense batches (Fisher per unit of cost)",
            int(importance.batches),
        )
        return ranks

    def maybe_init_gates_from_importance_(self) -> bool:
        """:meth:`init_gates_from_importance_` if the config asks for it, scores exist and they were not applied yet
        (the integrations call it when the dense phase ends); ``True`` if it initialised the gates."""
        importance = self.importance
        if importance is None or importance.done:
            return False
        if int(importance.batches) == 0:
            importance.applied.fill_(1)  # no dense phase (dense_steps=0, or a resume past it): nothing to apply
            log.info("lightning-prune: init_from_importance: no dense batches were seen; the gates keep their init.")
            return False
        self.init_gates_from_importance_()
        return True

    def gate_parameters(self) -> list[nn.Parameter]:
        return list(self.gates.parameters())

    def multiplier_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.gate_parameters() + self.module_parameters()}
        return [p for p in self.state.parameters() if id(p) not in ids]

    def module_parameters(self) -> list[nn.Parameter]:
        """Parameters of modules a method adds to the model (``state.method_modules``, e.g. PAT's HSMs): trained
        like model weights, in every phase."""
        modules = getattr(self.state, "method_modules", None)
        return list(modules.parameters()) if modules is not None else []

    def param_groups(
        self, lr: float, weight_decay: float = 0.0, gate_lr: float | None = None, lagrangian_lr: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the model's trainable parameters, the gates and the multipliers.

        Gates and multipliers get their own learning rates and no weight decay; the multipliers are
        maximised (their gradient is reversed in the graph), so one ordinary optimizer serves all groups.
        A method's own modules (PAT's HSMs, :meth:`module_parameters`) get the group ``lightning_prune.modules``
        with the model's ``lr`` and no weight decay.
        """
        gate_lr = gate_lr or self.config.gate_lr
        lagrangian_lr = lagrangian_lr or self.config.lagrangian_lr or gate_lr
        own = {id(p) for p in self.state.parameters()}
        model_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]
        groups = [
            {"params": model_params, "lr": lr, "weight_decay": weight_decay, "name": "model"},
            {"params": self.gate_parameters(), "lr": gate_lr, "weight_decay": 0.0, "name": "lightning_prune.gates"},
            {
                "params": self.multiplier_parameters(),
                "lr": lagrangian_lr,
                "weight_decay": 0.0,
                "name": "lightning_prune.multipliers",
            },
            {"params": self.module_parameters(), "lr": lr, "weight_decay": 0.0, "name": "lightning_prune.modules"},
        ]
        return [g for g in groups if g["params"]]

    # -- reporting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Scalars worth logging: target, expected and exact sparsity, multipliers, kept units."""
        probs = {name: gate.keep_probability() for name, gate in self.gates.items()}
        masks = _binary(self.deterministic_masks())
        exp_params, exp_flops = self.cost.total(probs)
        out = {
            "target_sparsity": self.current_target(),
            "expected_sparsity": float(self.cost.sparsity(probs, self.config.target)),
            "exact_sparsity": float(self.cost.sparsity(masks, self.config.target)),
            "expected_params": float(exp_params),
            "expected_flops": float(exp_flops),
        }
        scalars = [(name, p) for name, p in self.state.regularizer.named_parameters() if p.numel() == 1]
        short = [name.split(".")[-1] for name, _ in scalars]
        for (name, p), last in zip(scalars, short):  # "lambda_1"; "heads/lambda_1" when several structures have one
            out[last if short.count(last) == 1 else name.replace(".", "/")] = float(p)
        for name, m in masks.items():
            out[f"kept/{name}"] = float(m.sum(-1).float().mean())
        out.update(self.last_terms)
        return out

    def current_target(self) -> float:
        """The sparsity the method's schedule asks for now (during a target warm-up: part of the final one)."""
        schedule = getattr(self.state.regularizer, "current_target", None)
        return float(schedule(self.pruning_step)) if schedule else self.config.target_sparsity

    def final_target(self) -> float:
        """The sparsity the method aims at in the end: ``target_sparsity``, or the sparsity implied by a target
        architecture (L0's ``target_architecture``, PAT's ``target_hidden_size``)."""
        schedule = getattr(self.state.regularizer, "current_target", None)
        return float(schedule(2**62)) if schedule else self.config.target_sparsity  # past any warm-up

    # -- export --------------------------------------------------------------------------------------
    def export(self, check: bool = True) -> nn.Module:
        """A plain compact model: LoRA merged, gates folded into the weights, pruned units removed.

        The result is a fresh model of the original class (uniform shapes) or of the per-layer class, with
        no hooks, no gates and no peft wrappers. Before it is returned, its outputs are compared with the
        gated model's in eval mode on random inputs; a mismatch raises :class:`ExportMismatchError`.
        """
        self._check_attached()
        self._check_materialised()
        self._check_finite_parameters()
        dense = self.phase == "dense"
        if dense:  # the gates never trained: the model the user has is the dense one, so that is what ships
            log.warning(
                "lightning-prune: export() in the dense phase (pruning never started: training ended within the "
                "dense warm-up, or set_phase('prune') was never called). Exporting the dense model, LoRA merged; "
                "train past the warm-up (e.g. more steps or a smaller `dense_steps`) to prune."
            )
            masks = {name: torch.ones(spec.rows, spec.units) for name, spec in self.specs.items()}
        else:
            masks = self.deterministic_masks()
        state = MergedWeights(self.model, skip_prefix=STATE_ATTRIBUTE)  # merged per tensor as the adapter reads it
        compact, info = self.config.build_compact(self, state, masks)
        compact.eval()  # a fresh model starts in training mode (dropout on); exports are for inference
        del state
        params_after, flops_after = self.cost.total(_binary(masks))  # scaled masks (γ · binary) count as kept
        report = ExportReport(
            adapter=self.adapter.name,
            method=self.config.method_name,
            structures=list(self.specs),
            target_sparsity=self.final_target(),
            exact_sparsity=float(self.cost.sparsity(_binary(masks), self.config.target)),
            params_before=int(self.cost.dense_params),
            params_after=int(round(float(params_after))),
            flops_per_token_before=float(self.cost.dense_flops),
            flops_per_token_after=float(flops_after),
            kept_units={name: m.sum(-1).long().tolist() for name, m in _binary(masks).items()},
            layer_shapes=info.get("layer_shapes", []),
            uniform=bool(info.get("uniform", False)),
        )
        counted = count_parameters(compact)
        if counted != report.params_after:
            raise AttachStateError(
                f"The compact model has {counted} parameters but the cost model predicts {report.params_after}. "
                "The model probably has parameters the adapter does not know; please report it."
            )
        if check:
            previous, previous_path = self.phase, self.mask_path
            # the export folds the merged path, with the masks it exported (none in the dense phase)
            self.phase, self.mask_path = ("dense" if dense else "frozen"), "merged"
            try:
                # the model the user runs: a peft wrapper's forward is what was trained (and what the check compares)
                checked = verify_export(self.adapter, self.model, compact, self.config.export_rtol)
                report.max_abs_diff, report.reference_scale, report.generation_max_abs_diff = checked[:3]
                report.check_dtype = checked[3]
            finally:
                self.phase, self.mask_path = previous, previous_path
        self.last_report = report
        setattr(compact, REPORT_ATTRIBUTE, report)  # the report travels with its model (save_compact writes it)
        log.info("lightning-prune: %s", report.summary())
        return compact

    def save_compact(
        self,
        path: str | Path,
        overwrite: bool = False,
        compact: nn.Module | None = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    ) -> Path:
        """Export (unless ``compact`` is given) and write the compact model to ``path`` atomically, as safetensors
        files of at most ``max_shard_size`` each (``"2GB"``, ``"500MB"`` or bytes) that ``load_compact`` reads and
        verifies. The report written is the one of the model written (attached to it by :meth:`export`); a
        ``compact`` that did not come from an export is written without one."""
        from lightning_prune.export.io import check_export_dir, save_compact

        path = Path(path)
        check_export_dir(path, overwrite)  # fail before spending time on the export
        compact = compact if compact is not None else self.export()
        report = getattr(compact, REPORT_ATTRIBUTE, None)
        if report is None:
            log.warning(
                "lightning-prune: save_compact(compact=...) got a model without an export report (not from "
                "Pruner.export or load_compact); %s is written without lightning_prune_report.json.",
                path,
            )
        return save_compact(compact, path, report=report, overwrite=overwrite, max_shard_size=max_shard_size)

    # -- life cycle ----------------------------------------------------------------------------------
    def _check_attached(self) -> None:
        if getattr(self.model, STATE_ATTRIBUTE, None) is not self.state:
            raise AttachStateError("These gates were detached from the model (or replaced); attach again.")
        for path, module in self._hooked:
            current = self.hf_model.get_submodule(path) if path else self.hf_model
            if current is not module:
                raise AttachStateError(
                    f"`{path}` was replaced after attach() (now "
                    f"{type(current).__module__}.{type(current).__qualname__}), so its masks are no longer applied. "
                    "Apply peft's get_peft_model (or any other module surgery) *before* lightning_prune.attach()."
                )
        frozen = [n for n, p in self.gates.named_parameters() if not p.requires_grad]
        if frozen and self.phase == "prune":
            raise AttachStateError(
                f"Gate parameters {frozen[:3]} do not require grad: something froze them after attach() (peft's "
                "get_peft_model does). Apply peft before lightning_prune.attach()."
            )

    def _check_materialised(self) -> None:
        meta = [n for n, t in self.model.named_parameters() if t.is_meta]
        meta += [n for n, t in self.model.named_buffers() if t.is_meta]
        if meta:
            raise AttachStateError(
                f"The model's weights were never materialised: {len(meta)} tensor(s) are still on the meta device "
                f"(e.g. {meta[:3]}), so there is nothing to export. Load the weights first: "
                "`model.to_empty(device='cpu')` then `model.load_state_dict(...)` (or a checkpoint load), keeping the "
                "gates attached; or attach to a model loaded with `from_pretrained`."
            )

    def detach(self) -> nn.Module:
        """Remove the hooks and the gates from the model; returns the model as it was before ``attach``."""
        self.stop_update_check()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.model, STATE_ATTRIBUTE, None) is self.state:
            delattr(self.model, STATE_ATTRIBUTE)
        return self.model

    def _check_target_reachable(self) -> None:
        zeros = {name: torch.zeros(spec.rows, spec.units) for name, spec in self.specs.items()}
        reachable = float(self.cost.sparsity(zeros, self.config.target))
        if self.config.target_sparsity > reachable + 1e-9:
            raise PruningConfigError(
                f"`target_sparsity`={self.config.target_sparsity} cannot be reached by pruning {list(self.specs)}: "
                f"removing every unit of them removes only {reachable:.3f} of the prunable {self.config.target}. "
                "Add structures (e.g. 'hidden' or 'ffn') or lower the target."
            )


def _check_importance_init(gates: dict[str, Gate], config: PruningConfig) -> None:
    unsupported = sorted({type(g).__name__ for g in gates.values() if g.default_importance_spread is None})
    if unsupported:
        raise PruningConfigError(
            f"`init_from_importance=True` needs gates with an importance init; {unsupported} ({config.method_name}) "
            "have none. Use `init_from_importance=False` with this method."
        )


def _binary(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kept (1) / pruned (0) indicators of eval masks that may carry scales (``γ · binary``): sizes count units."""
    return {name: (m != 0).to(m.dtype) for name, m in masks.items()}


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
