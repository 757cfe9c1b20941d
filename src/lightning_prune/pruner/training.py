"""Training with the gates: the penalty, the post-step, the phases and the target schedule, and the gates'
initialisation from dense-phase importance (:mod:`lightning_prune.importance`)."""

from __future__ import annotations

import logging

import torch

from lightning_prune.contracts import check_optimizer_holds_gates
from lightning_prune.errors import AttachStateError, NonFiniteError, PruningConfigError
from lightning_prune.importance import ImportanceScores, global_ranks, importance_per_cost, unit_costs
from lightning_prune.methods.base import zero_with_graph
from lightning_prune.pruner.stats import emptied_structures_warning

log = logging.getLogger("lightning_prune")


def _rank_zero() -> bool:
    """Whether this process speaks for the run (rank 0 of an initialised process group, or the only process)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


PHASES = ("dense", "prune", "frozen")


class TrainingMixin:
    """The training half of :class:`~lightning_prune.pruner.Pruner`: what the training loop calls each step."""

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
            # said now, while the user can still stop: the fine-tuning that follows trains this architecture
            emptied = emptied_structures_warning(self.deterministic_masks())
            if emptied is not None and _rank_zero():
                log.warning("%s (masks frozen at pruning step %d.)", emptied, self.pruning_step)
        self.phase = phase
        for p in self.state.gates.parameters():
            p.requires_grad_(phase == "prune")

    def current_target(self) -> float:
        """The sparsity the method's schedule asks for now (during a target warm-up: part of the final one)."""
        schedule = getattr(self.state.regularizer, "current_target", None)
        return float(schedule(self.pruning_step)) if schedule else self.config.target_sparsity

    def final_target(self) -> float:
        """The sparsity the method aims at in the end: ``target_sparsity``, or the sparsity implied by a target
        architecture (L0's ``target_architecture``, PAT's ``target_hidden_size``)."""
        schedule = getattr(self.state.regularizer, "current_target", None)
        return float(schedule(2**62)) if schedule else self.config.target_sparsity  # past any warm-up

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
