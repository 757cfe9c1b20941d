"""Self-distillation "for free": the ungated model teaches the gated one, on the very same weights.

Pruning methods usually recover accuracy by distilling from the dense model (CoFi, Xia et al., "Structured
Pruning Learns Compact and Accurate Models", ACL 2022: ``0.1·KL·T² + 0.9·layer loss`` with ``T = 2``), which
costs a second copy of the model. Here the teacher *is* the student with everything the pruner added switched
off and, under peft, the LoRA adapters disabled: the frozen pretrained model, for no extra parameter memory.

* A forward hook on the Hugging Face model sees every training forward of the prune phase, whoever makes it
  (a plain loop, :class:`~lightning_prune.PruningCallback`, :class:`~lightning_prune.PruningTrainer`).
* Right after the student forward it re-runs the same module on the same inputs under ``torch.no_grad()``
  with every hook of the pruner and its method suspended (masks, PAT's HSMs, ATP's frozen-path masks), the
  adapters off and the model in eval mode, then restores hooks, adapters, ``requires_grad`` flags, module
  modes and the student's masks (gradient checkpointing recomputes the student forward with them).
* It stores ``distill_weight · (T²·KL(p_teacher^T ‖ p_student^T) + distill_hidden_weight · MSE_hidden)``
  (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015: ``T²`` keeps the gradient scale
  independent of ``T``), which :meth:`Pruner.penalty` adds to the loss as the term ``"distill"``. The user's
  task loss is left as it is (no ``1 − α`` factor).

Choices:

* **Dropout**: the teacher runs in eval mode (dropout off, every module's mode restored afterwards). A teacher
  is a fixed target and dropout would only add noise to it; eval mode also leaves the global RNG untouched,
  so the student sees the same dropout draws with and without distillation.
* **Without LoRA** the teacher is the *current* weights with the gates off: it moves with training, and the
  term then asks the gated model to agree with the ungated one (a consistency target, not the pretrained
  model). Under LoRA (or any peft adapter) the teacher is exactly the pretrained model.
* **A fine-tuned teacher** (``distill_teacher="prune_start"``): at the first prune-phase forward the trainable
  parameters are copied (under LoRA only the adapters and ``modules_to_save`` heads), and the teacher pass swaps
  the copies in by reference (``param.data``), adapters on, gates off: the model as the dense phase left it, CoFi's
  fine-tuned teacher without a second model. A run resumed mid-prune takes its copy at the resume (logged).
* **Phases**: only the ``prune`` phase distils (training mode, gradients enabled). In the ``dense`` phase the
  term would only pull the adapters back to the base model; in the ``frozen`` phase the architecture is fixed.
* **Hidden states** (``distill_hidden_weight > 0``): the student is asked for ``output_hidden_states`` (its
  output then carries them), and every block's output is matched to the teacher's by mean squared error over
  the **kept hidden dims only** (the student's sampled ``hidden`` mask ``> 0``): a pruned dim is zero in the
  student by construction and must not be pulled back. Layers are matched one to one (the student has the
  teacher's depth until export and the same basis, so no learned projection as in CoFi is needed).
* **Positions**: padded positions (``attention_mask == 0``, when passed by keyword with the logits' leading
  shape) are left out of both terms.
* **Limits**: the model must be called through ``__call__`` (a ``.forward()`` call skips hooks: ``penalty()``
  then raises), with ``return_dict=True`` and no ``past_key_values`` cache. FSDP-sharded roots are untested.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lightning_prune.pruner import Pruner

log = logging.getLogger("lightning_prune")

#: Terms kept when several training forwards run before one ``penalty()``; older ones are dropped with a warning.
MAX_PENDING = 16


def kl_distillation(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Hinton's ``T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, summed over classes, mean over positions.

    Args:
        student: ``(..., V)`` logits with a graph.
        teacher: ``(..., V)`` logits (no graph).
        temperature: ``T > 0``; the ``T²`` factor keeps gradient magnitudes comparable across temperatures.
        weight: optional ``(...)`` position weights (1 = counted, 0 = padding).
    """
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)  # (...)
    return temperature**2 * _weighted_mean(per_position, weight)


def hidden_distillation(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    kept: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over blocks of the per-position MSE between student and teacher block outputs, over kept dims.

    Args:
        student: hidden states ``(B, S, d)`` per block (the embedding output excluded).
        teacher: the teacher's, same layout.
        kept: optional ``(d,)`` 0/1 float mask of the hidden dims the student keeps.
        weight: optional ``(B, S)`` position weights.
    """
    losses = []
    for hs, ht in zip(student, teacher):
        sq = (hs.float() - ht.float()).pow(2)  # (B, S, d)
        if kept is None:
            per_position = sq.mean(-1)
        else:
            per_position = (sq * kept).sum(-1) / kept.sum().clamp_min(1.0)
        losses.append(_weighted_mean(per_position, weight))
    return torch.stack(losses).mean()


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def _field(output: Any, name: str) -> Any:
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


class SelfDistiller:
    """The teacher pass and the distillation term of one :class:`~lightning_prune.Pruner`.

    Built by the pruner when ``config.distill_weight > 0``; with the default ``0`` no hook is installed and
    no extra forward ever runs.

    Args:
        pruner: the pruner whose masks are switched off for the teacher.

    Raises:
        PruningConfigError: the model is a bare backbone (``*Model``) whose outputs carry no logits.
    """

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        self.config = pruner.config
        self.module = pruner.hf_model
        if pruner.adapter.root_module() is self.module:
            raise PruningConfigError(
                f"Self-distillation (`distill_weight`={self.config.distill_weight}) matches the model's logits, but "
                f"{type(self.module).__name__} is a bare backbone without a head, so its outputs have no logits. "
                "Attach to a model with a head (e.g. *ForCausalLM or *ForSequenceClassification), or set "
                "`distill_weight=0`."
            )
        retrained = [n for n, m in pruner.model.named_modules() if hasattr(m, "original_module")]
        if retrained and self.config.distill_teacher == "ungated":
            warnings.warn(
                f"Self-distillation runs the teacher with the peft adapters off, so `{retrained[0]}` (peft "
                "`modules_to_save`) is its original, untrained copy in the teacher. If that head is new for this "
                "task, the teacher's targets are noise: set `distill_teacher='prune_start'` (the teacher is then the "
                "model after the dense phase, head included), fine-tune first and prune with distillation "
                "afterwards, or set `distill_weight=0`.",
                UserWarning,
                stacklevel=4,
            )
        params = inspect.signature(self.module.forward).parameters
        self._takes_use_cache = "use_cache" in params
        self._running = False
        self._pending: list[dict[str, torch.Tensor]] = []
        self._warned = False
        self._tuner_layers: list[nn.Module] | None = None
        #: ``distill_teacher="prune_start"``: (parameter, its value at the first prune-phase forward) pairs.
        self._snapshot: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self._backbone_calls = 0
        self._head_calls = 0
        #: Teacher forwards run so far (a cheap way to see that distillation is active, or not).
        self.teacher_forwards = 0
        #: Unweighted parts of the last term returned by :meth:`pop_terms` (``distill_kl``, ``distill_hidden``).
        self.components: dict[str, float] = {}

    # -- hooks ---------------------------------------------------------------------------------------
    def install(self) -> list[RemovableHandle]:
        """Register the hooks on the Hugging Face model; returns their handles (removed by ``detach``)."""
        handles = [self.module.register_forward_hook(self._after_forward, with_kwargs=True)]
        handles.append(self.pruner.adapter.root_module().register_forward_pre_hook(self._count_backbone_call))
        if self.config.distill_hidden_weight > 0:
            handles.append(self.module.register_forward_pre_hook(self._ask_hidden_states, with_kwargs=True))
        return handles

    def _active(self, module: nn.Module) -> bool:
        # the backbone's mode decides, as it does for the mask refresh (sampled masks only in training mode)
        training = self.pruner.adapter.root_module().training
        return not self._running and self.pruner.phase == "prune" and training and torch.is_grad_enabled()

    def _count_backbone_call(self, module: nn.Module, args: Any) -> None:
        # a backbone forward that the head's hook never sees means the model was called through `.forward()`
        if self._active(module):
            self._backbone_calls += 1

    def _ask_hidden_states(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if not self._active(module):
            return None
        return args, {**kwargs, "output_hidden_states": True}

    def _after_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if not self._active(module):
            return None
        self._head_calls += 1
        student_logits = _field(output, "logits")
        if not torch.is_tensor(student_logits):
            raise PruningConfigError(
                f"Self-distillation needs the model's logits, but {type(module).__name__} returned "
                f"{type(output).__name__} without a `logits` field. Call the model with return_dict=True (the "
                "default) and a head that produces logits, or set `distill_weight=0`."
            )
        if kwargs.get("past_key_values") is not None:
            raise PruningConfigError(
                "Self-distillation re-runs the forward pass for the teacher, which would update the "
                "`past_key_values` cache a second time. Train without a cache (the default), or set "
                "`distill_weight=0`."
            )
        if self.config.distill_teacher == "prune_start" and self._snapshot is None:
            self._snapshot = self._take_snapshot()
        teacher = self._teacher_forward(module, args, kwargs)
        mask = kwargs.get("attention_mask")
        weight = mask if torch.is_tensor(mask) and mask.shape == student_logits.shape[:-1] else None
        kl = kl_distillation(student_logits, teacher["logits"], self.config.distill_temperature, weight)
        terms = {"kl": kl}
        if self.config.distill_hidden_weight > 0:
            hs = _field(output, "hidden_states")
            if hs is None or teacher.get("hidden_states") is None:
                raise PruningConfigError(
                    f"`distill_hidden_weight` > 0 needs hidden states, but {type(module).__name__} returned none with "
                    "output_hidden_states=True. Set `distill_hidden_weight=0` for this model."
                )
            hidden_mask = self.pruner.mask("hidden")
            kept = None if hidden_mask is None else (hidden_mask[0].detach() > 0).float()
            hidden_weight = None
            if weight is not None and weight.shape == hs[-1].shape[:-1]:
                hidden_weight = weight
            terms["hidden"] = hidden_distillation(tuple(hs[1:]), teacher["hidden_states"][1:], kept, hidden_weight)
        if len(self._pending) >= MAX_PENDING:
            if not self._warned:
                log.warning(
                    "lightning-prune: %d training forwards ran without a `pruner.penalty()` call; the distillation "
                    "terms of the oldest are dropped. Add `pruner.penalty()` to the loss of every training forward.",
                    len(self._pending),
                )
                self._warned = True
            self._pending.pop(0)
        self._pending.append(terms)
        return None

    # -- the teacher -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The same module on the same inputs with gates off, adapters off, eval mode; returns logits (+ hidden)."""
        modes = [(m, m.training) for m in module.modules()]
        teacher_kwargs = {k: v for k, v in kwargs.items() if k != "labels"}  # no loss for the teacher
        teacher_kwargs["output_hidden_states"] = self.config.distill_hidden_weight > 0
        if self._takes_use_cache:
            teacher_kwargs["use_cache"] = False
        self._running = True
        try:
            # the teacher is the model as it was before attach (every hook of the pruner and its method suspended,
            # these very hooks too): no stale mask can leak in
            module.eval()
            weights = self.snapshot_weights() if self._snapshot is not None else self.adapters_disabled()
            with self.pruner.ungated(), weights:
                out = module(*args, **teacher_kwargs)
            self.teacher_forwards += 1
            return {"logits": _field(out, "logits"), "hidden_states": _field(out, "hidden_states")}
        finally:
            for m, training in modes:
                m.training = training
            self._running = False

    def _take_snapshot(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """A copy of every trainable model parameter (not the pruner's own), the ``"prune_start"`` teacher."""
        own = {id(p) for p in self.pruner.state.parameters()}
        snapshot = [
            (p, p.detach().clone()) for p in self.pruner.model.parameters() if p.requires_grad and id(p) not in own
        ]
        numel = sum(t.numel() for _, t in snapshot)
        step = self.pruner.pruning_step
        log.info(
            "lightning-prune: distillation teacher = the trainable weights at prune step %d (%s parameters copied).",
            step,
            f"{numel:,}",
        )
        if step > 0:
            log.warning(
                "lightning-prune: the `prune_start` distillation teacher was taken at prune step %d, not at the start "
                "of the prune phase (a resumed run does not keep the first one): the teacher is the model of that "
                "step.",
                step,
            )
        return snapshot

    @contextmanager
    def snapshot_weights(self) -> Iterator[None]:
        """The trainable parameters hold their prune-start values (swapped in by reference, no copy)."""
        assert self._snapshot is not None
        live = [p.data for p, _ in self._snapshot]
        try:
            for p, value in self._snapshot:
                p.data = value
            yield
        finally:
            for (p, _), value in zip(self._snapshot, live):
                p.data = value

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """peft adapters (LoRA layers, ``modules_to_save`` wrappers) off, as peft's ``disable_adapter()`` does.

        Unlike peft's context manager it puts back each layer's previous on/off state and every parameter's
        ``requires_grad`` exactly (peft's re-enable marks all active adapters trainable).
        """
        if self._tuner_layers is None:
            self._tuner_layers = [
                m
                for m in self.pruner.model.modules()
                if callable(getattr(m, "enable_adapters", None))
                and isinstance(getattr(m, "disable_adapters", None), bool)
            ]
        layers = [m for m in self._tuner_layers if not m.disable_adapters]
        if not layers:
            yield
            return
        flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
        try:
            for m in layers:
                m.enable_adapters(False)
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)
            for p, flag in flags:
                p.requires_grad_(flag)

    # -- the term --------------------------------------------------------------------------------------
    def pop_terms(self) -> dict[str, torch.Tensor]:
        """``{"distill": weighted term}`` summed over the training forwards since the last call (``{}`` if none).

        Raises:
            PruningConfigError: a training forward reached the backbone without passing through the model's own
                call (``model.forward(...)`` skips hooks), so it could not be distilled.
        """
        missed = self._backbone_calls - self._head_calls
        self._backbone_calls = self._head_calls = 0
        if missed > 0:
            self._pending = []
            raise PruningConfigError(
                f"Self-distillation saw {missed} training forward(s) of the backbone that did not go through "
                f"{type(self.module).__name__}.__call__ (e.g. `model.forward(...)`, or a wrapper that calls "
                "`.forward` directly), so no teacher pass ran for them. Call the model itself (`model(**batch)`), "
                "or set `distill_weight=0`."
            )
        if not self._pending:
            return {}
        pending, self._pending = self._pending, []
        kl = torch.stack([t["kl"] for t in pending]).sum()
        total = self.config.distill_weight * kl
        self.components = {"distill_kl": float(kl.detach())}
        if self.config.distill_hidden_weight > 0:
            hidden = torch.stack([t["hidden"] for t in pending]).sum()
            total = total + self.config.distill_weight * self.config.distill_hidden_weight * hidden
            self.components["distill_hidden"] = float(hidden.detach())
        return {"distill": total}
