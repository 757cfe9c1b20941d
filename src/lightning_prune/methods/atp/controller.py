"""The ATP training loop: alternating generator and LoRA updates with an asymmetric forward.

ATP (Lu et al., arXiv 2412.14426) trains the decision generator and LoRA in alternation, each with its own
view of the masks:

* **generator update** (held-out batch): masks on the merged path, ``(W + BA)x ⊙ m``, with ``m`` the soft
  Gumbel-sigmoid samples ``σ((z + g + b)/T)`` as in the released code (``ATPConfig.generator_masks="hard"``:
  their binary straight-through form), loss = task loss + budget loss on hard decisions; only the generator
  receives gradients (LoRA is switched off for the step).
* **LoRA update** (training batch): hard eval decisions on the frozen path only, ``m ⊙ Wx + BAx``, loss =
  task loss + group lasso on the pruned units' LoRA rows/columns; the generator receives no gradient.

Plain PyTorch::

    pruner = lp.attach(peft_model, lp.ATPConfig(target_sparsity=0.4, control_steps=2000))
    atp = ATPController(pruner)
    lora_opt, gen_opt = atp.optimizers(lr=1e-4)               # AdamW: LoRA (+ other trainables), generator
    for train_batch, held_out_batch in loader:
        atp.generator_step(held_out_batch, gen_opt)           # skipped once the decisions are frozen
        atp.lora_step(train_batch, lora_opt)                  # + proximal step on pruned LoRA groups
    compact = pruner.export()

Lightning (manual optimization; the generator and LoRA steps need separate backward passes)::

    class Module(L.LightningModule):
        def __init__(self, model, config):
            super().__init__()
            self.automatic_optimization = False
            self.model = model
            self.pruner = lp.attach(model, config)
            self.atp = ATPController(self.pruner)

        def configure_optimizers(self):
            return list(self.atp.optimizers(lr=1e-4))       # [lora_opt, generator_opt]

        def training_step(self, batch, batch_idx):
            lora_opt, gen_opt = self.optimizers()
            train_batch, held_out = batch
            if not self.atp.frozen:
                with self.atp.mode("generator"):
                    loss = self.model(**held_out).loss + self.pruner.penalty()
                gen_opt.zero_grad()
                self.manual_backward(loss)
                gen_opt.step()
                self.atp.record_generator_step()
            with self.atp.mode("lora"):
                loss = self.model(**train_batch).loss + self.pruner.penalty()
            lora_opt.zero_grad()
            self.manual_backward(loss)
            lora_opt.step()
            self.atp.after_lora_step(lora_opt)

The mode, step counters and frozen flag live in the model (``model.pruning_gates.regularizer``), so a
checkpoint resumes the control phase where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import AttachStateError, PruningConfigError
from lightning_prune.methods.atp.config import ATPConfig
from lightning_prune.methods.atp.regularizer import MODES, ATPRegularizer, group_norms, pruned_lora_slices
from lightning_prune.pruner import Pruner

LossFn = Callable[[nn.Module, Any], torch.Tensor]


#: the steps' names in messages, by mode
_STEP_NAMES = {"generator": "generator", "lora": "LoRA"}


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss`` (a Hugging Face model given labels)."""
    return model(**batch).loss


class ATPController:
    """Mode switch and update steps of ATP for a pruner attached with :class:`ATPConfig`.

    Args:
        pruner: the pruner returned by ``lightning_prune.attach(model, ATPConfig(...))``.

    Raises:
        PruningConfigError: the pruner was not attached with an :class:`ATPConfig`.
    """

    def __init__(self, pruner: Pruner) -> None:
        if not isinstance(pruner.config, ATPConfig) or not isinstance(pruner.state.regularizer, ATPRegularizer):
            raise PruningConfigError(
                f"ATPController needs a pruner attached with ATPConfig, got {type(pruner.config).__name__}. "
                "Attach with lightning_prune.ATPConfig(...)."
            )
        self.pruner = pruner
        self.config: ATPConfig = pruner.config
        self._suspended: list[nn.Parameter] = []

    @property
    def regularizer(self) -> ATPRegularizer:
        return self.pruner.state.regularizer

    @property
    def current_mode(self) -> str:
        return self.regularizer.mode

    @property
    def frozen(self) -> bool:
        """Whether the control phase is over (decisions fixed; only LoRA trains)."""
        return bool(self.regularizer.frozen)

    @property
    def generator_steps(self) -> int:
        return int(self.regularizer.generator_steps)

    # -- parameters ------------------------------------------------------------------------------------------
    def generator_parameters(self) -> list[nn.Parameter]:
        return self.pruner.gate_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The model's trainable parameters (LoRA factors and anything else left trainable), gates excluded."""
        own = {id(p) for p in self.pruner.state.parameters()}
        params = [p for p in self.pruner.model.parameters() if id(p) not in own]
        suspended = {id(p) for p in self._suspended}
        return [p for p in params if p.requires_grad or id(p) in suspended]

    def optimizers(
        self, lr: float = 1e-4, generator_lr: float | None = None, weight_decay: float = 0.0
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """``(lora_optimizer, generator_optimizer)``: AdamW with ATP's learning rates (1e-4 and ``gate_lr``)."""
        lora = torch.optim.AdamW(self.lora_parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.optim.AdamW(self.generator_parameters(), lr=generator_lr or self.config.gate_lr, weight_decay=0.0)
        return lora, gen

    # -- modes -----------------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """Switch the forward and the penalty to ``"generator"`` or ``"lora"`` (see the module docstring).

        Raises:
            PruningConfigError: an unknown mode.
            AttachStateError: ``"generator"`` after the decisions froze.
        """
        if mode not in MODES:
            raise PruningConfigError(f"ATP `mode` must be one of {MODES}, got {mode!r}.")
        if mode == "generator" and self.frozen:
            raise AttachStateError(
                f"The ATP decisions are frozen (after {self.generator_steps} generator steps), so the generator is "
                "not trained anymore. Check `atp.frozen` before a generator step (generator_step() skips itself)."
            )
        self.regularizer.mode = mode
        self.pruner.mask_path = "merged" if mode == "generator" else "frozen"
        self.pruner.mask_sampling = mode == "generator"
        self._set_relaxed(mode == "generator" and self.config.generator_masks == "soft")
        if mode == "generator" and not self._suspended:  # only the generator learns from this step
            self._suspended = [p for p in self.lora_parameters() if p.requires_grad]
            for p in self._suspended:
                p.requires_grad_(False)
        elif mode == "lora":
            for p in self._suspended:
                p.requires_grad_(True)
            self._suspended = []

    @contextmanager
    def mode(self, mode: str) -> Iterator[None]:
        """Context manager form of :meth:`set_mode`; restores the previous mode (and the model's usual mask
        handling: merged path, sampling by train/eval) on exit."""
        previous = (self.current_mode, self.pruner.mask_path, self.pruner.mask_sampling)
        was_relaxed = any(getattr(getattr(g, "generator", None), "relaxed", False) for g in self.pruner.gates.values())
        self.set_mode(mode)
        try:
            yield
        finally:
            for p in self._suspended:
                p.requires_grad_(True)
            self._suspended = []
            self._set_relaxed(was_relaxed)
            self.regularizer.mode, self.pruner.mask_path, self.pruner.mask_sampling = previous

    def _set_relaxed(self, relaxed: bool) -> None:
        """Soft (``True``) or binary straight-through (``False``) samples from the decision generator(s)."""
        for gate in self.pruner.gates.values():
            if hasattr(gate, "generator"):
                gate.generator.relaxed = relaxed

    # -- steps -----------------------------------------------------------------------------------------------
    def generator_step(
        self,
        batch: Any,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn = default_loss,
        max_grad_norm: float | None = 3.0,
        eval_model: bool = True,
    ) -> dict[str, float] | None:
        """One generator update on a held-out batch; ``None`` (nothing done) once the decisions are frozen.

        Args:
            batch: passed to ``loss_fn(model, batch)``.
            optimizer: an optimizer over :meth:`generator_parameters` only.
            loss_fn: the task loss (default ``model(**batch).loss``).
            max_grad_norm: gradient clipping of the generator (3.0 in ATP); ``None`` for none.
            eval_model: run the model in eval mode (no dropout) as ATP does; the decisions are sampled anyway.
        """
        if self.frozen:
            return None
        parameters = self.generator_parameters
        task, _ = self._update("generator", batch, optimizer, loss_fn, max_grad_norm, parameters, train=not eval_model)
        ratio = self.regularizer.last_ratio_loss
        self.record_generator_step()
        return {"loss": float(task.detach()), "ratio_loss": float("nan") if ratio is None else ratio}

    def _update(
        self,
        mode: str,
        batch: Any,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        max_grad_norm: float | None,
        parameters: Callable[[], list[nn.Parameter]],
        train: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step in ``mode``: task loss + penalty, backward, ``parameters()`` clipped, step; returns
        ``(task loss, penalty)``. ``train``: the model's train mode during the step (restored after), ``None``:
        left as it is."""
        model = self.pruner.model
        was_training = model.training
        optimizer.zero_grad(set_to_none=True)
        try:
            with self.mode(mode):
                if train is not None:
                    model.train(train)
                task = loss_fn(model, batch)
                self.pruner.check_loss(task, f"{_STEP_NAMES[mode]} step's task loss")
                penalty = self.pruner.penalty()
                (task + penalty).backward()
        finally:
            if train is not None:
                model.train(was_training)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return task, penalty

    def record_generator_step(self) -> bool:
        """Count a generator update (call after ``optimizer.step()`` in a hand-written loop); freezes the
        decisions after ``control_steps`` or on a budget plateau. Returns whether they are frozen now."""
        return self.regularizer.record_generator_step(self.regularizer.last_ratio_loss)

    def lora_step(
        self,
        batch: Any,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn = default_loss,
        max_grad_norm: float | None = 1.0,
    ) -> dict[str, float]:
        """One LoRA update on a training batch: frozen-path masks, task loss + group lasso, then
        :meth:`after_lora_step`.

        Args:
            batch: passed to ``loss_fn(model, batch)``.
            optimizer: an optimizer over :meth:`lora_parameters`.
            loss_fn: the task loss (default ``model(**batch).loss``).
            max_grad_norm: gradient clipping of the LoRA parameters (1.0 in ATP); ``None`` for none.
        """
        task, penalty = self._update("lora", batch, optimizer, loss_fn, max_grad_norm, self.lora_parameters)
        zeroed = self.after_lora_step(optimizer)
        return {"loss": float(task.detach()), "group_lasso": float(penalty.detach()), "zeroed_groups": zeroed}

    def after_lora_step(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """After a LoRA ``optimizer.step()``: once frozen (and with ``proximal``), shrink the pruned units'
        LoRA groups by ``lr · group_lasso_final`` (the proximal step; ``lr`` from the optimizer's first group),
        then advance the pruner's step counter. Returns the number of groups that are exactly zero."""
        zeroed = 0
        if self.frozen and self.config.proximal and optimizer is not None:
            lr = float(optimizer.param_groups[0]["lr"])
            zeroed = self.regularizer.proximal_(self.pruner.deterministic_masks(), lr * self.config.group_lasso_final)
        self.pruner.step()
        return zeroed

    # -- inspection and finishing ----------------------------------------------------------------------------
    def freeze(self) -> None:
        """End the control phase now (e.g. from a callback that watches a validation metric)."""
        self.regularizer.frozen.fill_(True)

    @torch.no_grad()
    def kept_fraction(self) -> float:
        """Kept fraction of prunable parameters (or FLOPs) under the hard eval decisions."""
        return float(self.regularizer.kept_fraction(self.pruner, self.pruner.deterministic_masks()))

    @torch.no_grad()
    def pruned_lora_norm(self) -> float:
        """Largest L2 norm among the pruned units' LoRA rows/columns (0 when slicing the merge is exact)."""
        slices = pruned_lora_slices(self.regularizer.couplings, self.pruner.deterministic_masks())
        norms = [float(group_norms(w, d, i, eps=0.0).max()) for w, d, i in slices]
        return max(norms, default=0.0)

    @torch.no_grad()
    def zero_pruned_lora_(self) -> int:
        """Set the pruned units' LoRA rows/columns to exactly zero (the proximal step with unbounded strength),
        e.g. before an export when the frozen phase was short. Returns the number of groups zeroed."""
        return self.regularizer.proximal_(self.pruner.deterministic_masks(), float("inf"))
