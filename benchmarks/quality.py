"""Quality at equal size: real MiniLM-L6 pruned in training by our methods vs two baselines, same step budget.

Task: which of eight libraries wrote a docstring sentence (:mod:`quality_data`: real text read offline from the
installed packages' source, train/test from different source files, library names removed). Every row trains
the pretrained MiniLM-L6 (``AutoModelForSequenceClassification``) for the **same number of optimizer steps** on
the same batches, then is evaluated on the held-out files:

* ``dense``: plain fine-tuning (the reference accuracy and latency);
* ours: each entry of :data:`METHODS` (L0 / hard-concrete gates on heads and FFN channels with a Lagrangian
  target, CoFi-style: Xia et al., ACL 2022) at 30/50/70% of encoder parameters removed, exported compact;
* ``torch-pruning`` (two-stage, the classic train → prune → fine-tune pipeline): dense fine-tuning for
  ``prune_at`` of the steps, one-shot removal of whole heads and FFN channels with torch-pruning's group Taylor
  (or magnitude) importance at the same parameter budget, then fine-tuning of the smaller model for the rest;
* ``ModelPruning`` (Lightning's built-in callback): global L1 *unstructured* pruning of the encoder's linear
  weights by the same fraction, at the same step as the two-stage baseline, masks kept while fine-tuning goes on
  and made permanent at the end. Its weights are zeros inside dense matrices: it is neither smaller nor faster.

Per row: test accuracy, accuracy kept vs dense, parameter count, encoder sparsity (structural, and the fraction
of zero encoder weights), and latency measured round-robin in one run. Writes ``quality.json``, ``quality.md``
and ``quality.png`` (accuracy vs parameters) under ``--output``; the last line printed is the headline.

    python benchmarks/quality.py --quick     # 50% only, every method: ~6 min on 2 CPU cores
    python benchmarks/quality.py --quick --sparsities 0.3 0.5 0.7   # the quick budget at all three (~20 min)
    python benchmarks/quality.py             # full: 300 steps, 4000 sentences, 16x40 (1-2 h on 2 shared cores)
    python benchmarks/quality.py --sparsities 0.5   # the full budget at one sparsity (4 rows)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import interleaved_median, quiet_trainer
from torch import nn

import lightning_prune as lp

KINDS = ("dense", "ours", "two-stage", "unstructured", "two-stage+kd")


@dataclass
class BenchConfig:
    """One run's budget. Every row trains ``steps`` optimizer steps on the same batches."""

    steps: int = 300
    batch_size: int = 16
    max_length: int = 48
    lr: float = 1e-4
    seed: int = 0
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    prune_at: float = 0.3  # baselines: fraction of the steps trained dense before their one-shot pruning
    importance: str = "taylor"  # torch-pruning importance: "taylor" or "magnitude"
    taylor_batches: int = 4  # batches whose gradients give the Taylor importance
    latency_repeats: int = 15
    methods: tuple[str, ...] | None = None  # entries of METHODS to run (None: DEFAULT_METHODS that are registered)
    baselines: tuple[str, ...] | None = None  # kinds of BASELINES to run (None: all)
    train_dense: bool = True  # False (--no-dense): the dense row is the untrained model (a latency reference only)


@dataclass
class Task:
    name: str
    train: torch.utils.data.TensorDataset
    test: torch.utils.data.TensorDataset
    num_labels: int


@dataclass
class Row:
    kind: str  # one of KINDS
    name: str
    target: float  # asked-for fraction of encoder parameters removed (0 for dense)
    accuracy: float
    params: int
    encoder_sparsity: float  # structural: 1 - encoder linear parameters / the dense model's
    zero_fraction: float  # fraction of encoder linear weights that are exactly zero
    train_s: float
    latency_ms: float = float("nan")
    model: nn.Module | None = field(default=None, repr=False)

    def record(self, dense: Row) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "model"}
        out["accuracy_kept"] = self.accuracy / max(dense.accuracy, 1e-9)
        out["params_ratio"] = self.params / dense.params
        out["speedup"] = dense.latency_ms / self.latency_ms
        return out


# -- training -------------------------------------------------------------------------------------------------
def _module(model: nn.Module, lr: float, teacher: SnapshotTeacher | None = None):
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.train()

        def training_step(self, batch, batch_idx):
            ids, mask, labels = batch
            out = self.model(input_ids=ids, attention_mask=mask, labels=labels)
            if teacher is None:
                return out.loss
            return out.loss + teacher.term(ids, mask, out.logits)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)

    return Classifier()


class SnapshotTeacher:
    """Study lever (issue #18): knowledge distillation from a frozen copy of the model taken when pruning starts
    (CoFi, Xia et al. 2022, distil from the dense model; here the dense warm-up's weights, so no extra training).

    Adds ``weight · T² · KL(teacher ‖ student)`` (Hinton et al. 2015) to the loss once :meth:`take` has run. The
    same object serves our rows (snapshot at the dense → prune transition) and the two-stage control (snapshot
    right before the one-shot cut), so both get the same teacher at the same step.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 2.0) -> None:
        self.weight, self.temperature = weight, temperature
        self.teacher: nn.Module | None = None

    def take(self, model: nn.Module) -> None:
        import copy

        from lightning_prune.pruner import STATE_ATTRIBUTE

        saved = {k: v for k, v in model._modules.items() if k == STATE_ATTRIBUTE}
        for k in saved:  # the pruner's gates and regulariser stay with the student
            del model._modules[k]
        try:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        finally:
            model._modules.update(saved)

    def term(self, ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:  # before the snapshot (the dense phase)
            return logits.new_zeros(())
        from lightning_prune.distill import kl_distillation

        with torch.no_grad():
            target = self.teacher(input_ids=ids, attention_mask=mask).logits
        return self.weight * kl_distillation(logits, target, self.temperature)

    def at_prune_start(self, pruning: lp.PruningCallback):
        """A callback that takes the snapshot at the first batch of the prune phase, before the pruner's hooks
        (which are suspended for the copy) change anything."""
        from lightning.pytorch.callbacks import Callback

        teacher = self

        class Take(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if teacher.teacher is None and pruning.phase != "dense":
                    with pruning.pruner.ungated():
                        teacher.take(pruning.pruner.hf_model)

        return Take()


def fit(
    model: nn.Module,
    task: Task,
    cfg: BenchConfig,
    steps: int,
    callbacks=(),
    teacher: SnapshotTeacher | None = None,
    skip_epochs: int = 0,
) -> nn.Module:
    """Fine-tune ``model`` in place for ``steps`` optimizer steps with Lightning (seeded batches, no logging).

    Every row cuts training into the same epochs of ``prune_at · steps`` batches (``ModelPruning`` acts at an epoch
    end), so every row sees the same batches in the same order. ``skip_epochs``: continue a run that already
    trained that many epochs: the batch order is the one a single run has from that epoch on, and the global RNG
    (dropout) is not re-seeded but goes on from where the first run left it (:func:`fit_after_cut`).
    """
    import lightning as L

    if steps <= 0:
        return model
    if not skip_epochs:
        L.seed_everything(cfg.seed, verbose=False)
    order = torch.Generator().manual_seed(cfg.seed)  # batch order independent of the global RNG
    loader = torch.utils.data.DataLoader(
        task.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=order
    )
    for _ in range(skip_epochs):  # each epoch draws its permutation (and a worker seed) from ``order`` at iter()
        next(iter(loader))
    trainer = quiet_trainer(steps, callbacks, limit_train_batches=max(1, int(cfg.steps * cfg.prune_at)))
    trainer.fit(_module(model, cfg.lr, teacher), loader)
    return model.eval()


def fit_after_cut(
    model: nn.Module, task: Task, cfg: BenchConfig, callbacks=(), teacher: SnapshotTeacher | None = None
) -> nn.Module:
    """The two-stage pipeline's second stage: the steps after the first ``prune_at · steps`` (one epoch of
    :func:`fit`), in a new ``fit`` (a fresh optimizer) that continues the single run's batch order and RNG, so the
    whole pipeline sees the same batches as every other row (before session 10 it started a new shuffle)."""
    first = int(cfg.steps * cfg.prune_at)
    return fit(model, task, cfg, cfg.steps - first, callbacks, teacher, skip_epochs=1 if first else 0)


@torch.no_grad()
def accuracy(model: nn.Module, data: torch.utils.data.TensorDataset, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for ids, mask, labels in torch.utils.data.DataLoader(data, batch_size=batch_size):
        correct += int((model(input_ids=ids, attention_mask=mask).logits.argmax(-1) == labels).sum())
    return correct / len(data)


def encoder_linears(model: nn.Module) -> list[nn.Linear]:
    """The linear layers inside the transformer layers: the parameters a pruning budget is a fraction of."""
    return [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layer." in f".{name}."]


def _linear_stats(model: nn.Module) -> tuple[int, float]:
    linears = encoder_linears(model)
    total = sum(p.numel() for m in linears for p in m.parameters())
    weights = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return total, zeros / max(weights, 1)


# -- rows -----------------------------------------------------------------------------------------------------
@dataclass
class MethodEntry:
    """How to benchmark one of our registered methods: its config at a sparsity, and how to train it.

    ``train(model, config, task, cfg)`` fine-tunes for ``cfg.steps`` and returns the exported compact model.
    """

    config: Callable[[float, BenchConfig], lp.PruningConfig]
    train: Callable[[nn.Module, lp.PruningConfig, Task, BenchConfig], nn.Module]


class _InitGatesAtTarget:
    """Study lever: when pruning starts, place the hard-concrete gates at the *final* target's one-shot selection
    instead of near "all kept": ``log α = clamp(sharpness · (rank − r*))`` around the importance rank ``r*`` that
    separates kept from removed units (the sign forced to the selection), so the learned phase refines the
    boundary instead of spending its steps closing gates."""

    def __new__(cls, pruning: lp.PruningCallback, sharpness: float = 40.0):
        from lightning.pytorch.callbacks import Callback

        from lightning_prune.importance import global_ranks, importance_masks, importance_per_cost, unit_costs

        class Init(Callback):
            def __init__(self) -> None:
                self.done = False

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if self.done or pruning.phase != "prune":
                    return
                self.done = True
                p = pruning.pruner
                masks = importance_masks(p, target=p.config.target_sparsity)
                ranks = global_ranks(importance_per_cost(p.importance.synced(), unit_costs(p)))
                removed = torch.cat([ranks[n][masks[n] == 0] for n in ranks])
                kept = torch.cat([ranks[n][masks[n] > 0] for n in ranks])
                r_star = (float(removed.max()) + float(kept.min())) / 2 if removed.numel() else 0.0
                with torch.no_grad():
                    for name, gate in p.gates.items():
                        c = gate.log_alpha_clamp
                        value = (sharpness * (ranks[name] - r_star)).clamp(-c, c)
                        keep = masks[name].to(value.device) > 0
                        value = torch.where(keep, value.clamp(min=0.5), value.clamp(max=-0.5))
                        gate.log_alpha.copy_(value)

        return Init()


def _train_with_callback(
    model: nn.Module,
    config: lp.PruningConfig,
    task: Task,
    cfg: BenchConfig,
    dense: float = 0.1,
    freeze: float = 0.75,
    reset: bool = False,
    at_target: bool = False,
    fisher_from: float | None = None,
    taylor: bool = False,
) -> nn.Module:
    """Our Lightning callback: dense ``dense`` of the steps, pruning until ``freeze``, then masks frozen (default: the
    demo's schedule, 10% / 75%); ``reset``: a fresh optimizer state for the weights at the freeze; ``fisher_from``:
    the Fisher sums restart at this fraction of the steps (:func:`_late_importance`); ``taylor``: the cut ranks by
    the two-stage baseline's Taylor scores instead (:func:`_taylor_importance`)."""
    callback = lp.PruningCallback(
        config,
        dense_steps=max(1, int(cfg.steps * dense)),
        freeze_after_steps=max(2, int(cfg.steps * freeze)),
        plot=False,
        log_stats=False,
        prog_bar=False,
        seed=cfg.seed,  # mask samples from their own RNG stream: the global one (dropout, ...) is left alone
        reset_optimizer_at_freeze=reset,
    )
    extra = [_InitGatesAtTarget(callback)] if at_target else []
    if fisher_from is not None:
        extra.append(_late_importance(callback, int(cfg.steps * fisher_from)))
    if taylor:
        extra.append(_taylor_importance(callback, max(1, int(cfg.steps * dense)), task, cfg))
    fit(model, task, cfg, cfg.steps, [callback, *extra])
    return callback.pruner.export()


def _schedule(
    dense: float,
    freeze: float,
    reset: bool = False,
    at_target: bool = False,
    fisher_from: float | None = None,
    taylor: bool = False,
) -> Callable[[nn.Module, lp.PruningConfig, Task, BenchConfig], nn.Module]:
    """Train with the callback on another schedule: dense ``dense`` of the steps, masks frozen from ``freeze``."""

    def train(model: nn.Module, config: lp.PruningConfig, task: Task, cfg: BenchConfig) -> nn.Module:
        return _train_with_callback(
            model,
            config,
            task,
            cfg,
            dense=dense,
            freeze=freeze,
            reset=reset,
            at_target=at_target,
            fisher_from=fisher_from,
            taylor=taylor,
        )

    return train


def _taylor_importance(pruning: lp.PruningCallback, cut: int, task: Task, cfg: BenchConfig):
    """Study lever: after ``cut`` optimizer steps (the dense phase) the importance buffers are overwritten with
    the two-stage baseline's criterion: first-order Taylor ``Σ |w · ∂L/∂w|`` over each unit's weights and biases
    (a head: its query/key/value rows and attention-output columns; an FFN channel: its intermediate row and output
    column), gradients summed over ``cfg.taylor_batches`` training batches in eval mode (Molchanov et al. 2019, as
    torch-pruning's ``GroupTaylorImportance`` computes it). The cut then ranks by it instead of our Fisher sums."""
    from lightning.pytorch.callbacks import Callback

    class Taylor(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step != cut or pruning.phase != "dense":
                return
            model = pruning.pruner.model
            was_training = model.training
            model.eval()
            saved = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
            loader = torch.utils.data.DataLoader(task.train, batch_size=cfg.batch_size)
            for (ids, mask, labels), _ in zip(loader, range(cfg.taylor_batches)):
                model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            importance = pruning.pruner.importance
            heads, ffn = importance.fisher("heads"), importance.fisher("ffn")

            def t(p):  # |w · ∂L/∂w| elementwise
                return (p * p.grad).abs()

            with torch.no_grad():
                for l, layer in enumerate(model.bert.encoder.layer):
                    att = layer.attention
                    d = att.self.attention_head_size
                    rows = sum(
                        t(getattr(att.self, n).weight).sum(1) + t(getattr(att.self, n).bias)
                        for n in ("query", "key", "value")
                    )
                    cols = t(att.output.dense.weight).sum(0)
                    heads[l] = (rows + cols).view(-1, d).sum(1)
                    ffn[l] = (
                        t(layer.intermediate.dense.weight).sum(1)
                        + t(layer.intermediate.dense.bias)
                        + t(layer.output.dense.weight).sum(0)
                    )
            for n, p in model.named_parameters():
                p.grad = saved[n]
            model.train(was_training)
            print(f"    (Taylor scores of {cfg.taylor_batches} batches replace the Fisher sums after step {cut})")

    return Taylor()


def _late_importance(pruning: lp.PruningCallback, step: int):
    """Study lever: the Fisher sums start again at global step ``step`` of the dense phase, so that the cut ranks the
    units by the model near the cut only (the two-stage baseline's Taylor scores come from 4 batches at the cut),
    not by the first steps, when a new classification head is still random."""
    from lightning.pytorch.callbacks import Callback

    class Late(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            importance = pruning.pruner.importance
            if trainer.global_step == step and pruning.phase == "dense" and importance is not None:
                importance.reset_()

    return Late()


def _recent_importance(pruning: lp.PruningCallback, decay: float):
    """Study lever: the dense phase's Fisher sums as an exponential moving sum (each batch multiplies the sums so far
    by ``decay``), so that the ranking reflects the model near the cut rather than its first steps (when the new
    classification head is still random), like the two-stage baseline's Taylor scores on a few batches at the cut."""
    from lightning.pytorch.callbacks import Callback

    class Recent(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            importance = pruning.pruner.importance
            if pruning.phase == "dense" and importance is not None and not importance.done:
                for name in importance.names:
                    importance.fisher(name).mul_(decay)

    return Recent()


def _recipe_variant(
    distill_weight: float = 0.0,
    temperature: float = 2.0,
    fields: dict[str, Any] | None = None,
    structures: tuple[str, ...] = ("heads", "ffn"),
    importance_decay: float | None = None,
    **schedule: Any,
):
    """``lightning_prune.recipes.l0``: the config and schedule derived from ``max_steps`` (the config passed in only
    gives the sparsity). Study levers: ``schedule``, other :class:`~lightning_prune.recipes.L0Schedule` fractions;
    ``fields``, other config fields; ``distill_weight`` > 0, distillation from the snapshot taken when pruning starts
    (prune and frozen phases); ``importance_decay``, :func:`_recent_importance`."""

    def train(model: nn.Module, config: lp.PruningConfig, task: Task, cfg: BenchConfig) -> nn.Module:
        from lightning_prune import recipes

        callback = recipes.l0_callback(
            target_sparsity=config.target_sparsity,
            max_steps=cfg.steps,
            structures=structures,
            schedule=recipes.L0Schedule(**schedule),
            config_fields={"flops_seq_len": cfg.max_length, **(fields or {})},
            plot=False,
            log_stats=False,
            prog_bar=False,
            seed=cfg.seed,
        )
        extra = [] if importance_decay is None else [_recent_importance(callback, importance_decay)]
        teacher = SnapshotTeacher(distill_weight, temperature) if distill_weight > 0 else None
        if teacher is not None:
            extra.append(teacher.at_prune_start(callback))
        fit(model, task, cfg, cfg.steps, [callback, *extra], teacher=teacher)
        return callback.pruner.export()

    return train


def _shared(sparsity: float, cfg: BenchConfig, warmup: float = 0.4) -> dict[str, Any]:
    """What every row of ours shares: the budget on heads + FFN channels, a target warm-up over 40% of the steps
    (``warmup``: another fraction)."""
    return dict(
        target_sparsity=sparsity,
        structures=("heads", "ffn"),
        warmup_steps=max(1, int(cfg.steps * warmup)),
        flops_seq_len=cfg.max_length,
    )


def _l0_variant(warmup: float = 0.4, **fields: Any) -> Callable[[float, BenchConfig], lp.PruningConfig]:
    """An L0 config of the issue #18 study: the benchmark's L0 row with some fields changed."""

    def config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
        base = dict(gate_lr=0.1, lagrangian_lr=0.01, init_from_importance=False) | fields
        return lp.L0Config(**_shared(sparsity, cfg, warmup), **base)

    return config


def _gradual_variant(warmup: float, **fields: Any) -> Callable[[float, BenchConfig], lp.PruningConfig]:
    """Gradual pruning (``GradualConfig``): the exact-target selection by learned score at every step."""

    def config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
        return lp.GradualConfig(**_shared(sparsity, cfg, warmup), **fields)

    return config


def _l0_config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
    """L0 as a user gets it: the library's defaults, with only the budget and the structures given."""
    return lp.L0Config(target_sparsity=sparsity, structures=("heads", "ffn"), flops_seq_len=cfg.max_length)


def _gradual_config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
    """Gradual pruning as a user gets it: ``GradualConfig``'s defaults, only the budget and the structures given."""
    return lp.GradualConfig(target_sparsity=sparsity, structures=("heads", "ffn"), flops_seq_len=cfg.max_length)


def _train_with_defaults(model: nn.Module, config: lp.PruningConfig, task: Task, cfg: BenchConfig) -> nn.Module:
    """The callback with its defaults: ``schedule="auto"`` runs ``recipes.l0``'s phases for ``cfg.steps``."""
    callback = lp.PruningCallback(config, plot=False, log_stats=False, prog_bar=False, seed=cfg.seed)
    fit(model, task, cfg, cfg.steps, [callback])
    return callback.pruner.export()


def _ste_config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
    """Straight-through binary gates: the export mask is the training mask, so only the Lagrangian meets the budget."""
    return lp.STEConfig(**_shared(sparsity, cfg), lagrangian_lr=0.01)


def _polarization_config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
    """Scale gates under the polarization regulariser; the decision cuts at the budget (not the valley)."""
    return lp.PolarizationConfig(**_shared(sparsity, cfg), decision="target")


def _l0_distill_config(sparsity: float, cfg: BenchConfig) -> lp.PruningConfig:
    """L0 plus self-distillation: the same model with its gates off is the teacher (no second copy)."""
    config = _l0_config(sparsity, cfg)
    config.distill_weight = 1.0
    return config


#: Our methods, by name (a registered method, or ``method+variant``). A method that supports BERT is one entry
#: here. Not here: ``compresso`` (needs a LoRA-wrapped base: a different training budget from full fine-tuning),
#: ``atp`` and ``pat`` (their LoRA layout and hidden-stream modules are Llama-family only).
METHODS: dict[str, MethodEntry] = {
    "l0": MethodEntry(_l0_config, _train_with_defaults),  # what a user gets: defaults, auto schedule
    "l0+distill": MethodEntry(_l0_distill_config, _train_with_defaults),
    "gradual": MethodEntry(_gradual_config, _train_with_defaults),  # GradualConfig's defaults, auto schedule
    "l0+old": MethodEntry(  # the default row before session 6: the old rates on the demo's manual schedule
        _l0_variant(init_from_importance=True), _train_with_callback
    ),
    "ste": MethodEntry(_ste_config, _train_with_callback),
    "polarization": MethodEntry(_polarization_config, _train_with_callback),
    # issue #18 levers, one at a time and together (the `l0` row above is the old default, for comparison)
    "l0+noimp": MethodEntry(_l0_variant(init_from_importance=False), _train_with_callback),  # before issue #18
    "l0+imp": MethodEntry(_l0_variant(init_from_importance=True), _train_with_callback),
    "l0+sched": MethodEntry(_l0_variant(warmup=0.3), _schedule(0.1, 0.5)),
    "l0+imp+sched": MethodEntry(_l0_variant(warmup=0.3, init_from_importance=True), _schedule(0.1, 0.5)),
    "l0+imp+sched+lr": MethodEntry(
        _l0_variant(warmup=0.3, init_from_importance=True, gate_lr=0.5, lagrangian_lr=0.05), _schedule(0.1, 0.5)
    ),
    "l0+imp+d30": MethodEntry(_l0_variant(warmup=0.15, init_from_importance=True), _schedule(0.3, 0.55)),
    "l0+recipe": MethodEntry(_l0_variant(), _recipe_variant()),
    "l0+imp+sched+reset": MethodEntry(_l0_variant(warmup=0.3, init_from_importance=True), _schedule(0.1, 0.5, True)),
    "l0+imp+early": MethodEntry(_l0_variant(warmup=0.1, init_from_importance=True), _schedule(0.1, 0.25)),
    "l0+tgt": MethodEntry(_l0_variant(warmup=0.01, init_from_importance=True), _schedule(0.1, 0.5, True, True)),
    "l0+tgt+d30": MethodEntry(_l0_variant(warmup=0.01, init_from_importance=True), _schedule(0.3, 0.5, True, True)),
    "l0+lr5": MethodEntry(
        _l0_variant(warmup=0.3, init_from_importance=True, gate_lr=0.5, lagrangian_lr=0.5), _schedule(0.1, 0.5)
    ),
    "l0+lr5+reset": MethodEntry(
        _l0_variant(warmup=0.3, init_from_importance=True, gate_lr=0.5, lagrangian_lr=0.5), _schedule(0.1, 0.5, True)
    ),
    "l0+d30+brief": MethodEntry(  # two-stage's cut point, then a short learned refinement at the new rates
        _l0_variant(warmup=0.05, init_from_importance=True, gate_lr=0.5, lagrangian_lr=0.5), _schedule(0.3, 0.4, True)
    ),
    "l0+recipe+kd": MethodEntry(_l0_variant(), _recipe_variant(distill_weight=1.0)),
    "l0+recipe+kd.3": MethodEntry(_l0_variant(), _recipe_variant(distill_weight=0.3)),
    "l0+recipe+uniform": MethodEntry(_l0_variant(), _recipe_variant(fields={"uniform": True})),
    "l0+recipe+hidden": MethodEntry(_l0_variant(), _recipe_variant(structures=("heads", "ffn", "hidden"))),
    "l0+recipe+blocks": MethodEntry(
        _l0_variant(), _recipe_variant(structures=("heads", "ffn", "attn_block", "mlp_block"))
    ),
    # gradual: dense (Fisher) / warm-up to the target / frozen with a fresh optimizer state, then fine-tuning
    # (a/b/c: score lr 0.01; a5, a10: 0.05 (the GradualConfig default), 0.1)
    "gradual+a": MethodEntry(_gradual_variant(0.2, gate_lr=0.01), _schedule(0.1, 0.3, True)),  # cut by two-stage's step
    "gradual+b": MethodEntry(_gradual_variant(0.2, gate_lr=0.01), _schedule(0.2, 0.4, True)),
    "gradual+c": MethodEntry(_gradual_variant(0.1, gate_lr=0.01), _schedule(0.3, 0.4, True)),  # the L0 recipe's phases
    "gradual+a5": MethodEntry(_gradual_variant(0.2, gate_lr=0.05), _schedule(0.1, 0.3, True)),
    "gradual+b5": MethodEntry(_gradual_variant(0.2, gate_lr=0.05), _schedule(0.2, 0.4, True)),
    "gradual+a10": MethodEntry(_gradual_variant(0.2, gate_lr=0.1), _schedule(0.1, 0.3, True)),
    # session 7: the cut at two-stage's step (30%) in one shot (warm-up 0), masks frozen right after (fresh optimizer
    # state): two-stage with our Fisher-per-cost selection; +u: the same number of units in every layer
    "gradual+os": MethodEntry(_gradual_variant(0.0), _schedule(0.3, 0.31, True)),
    "gradual+os+u": MethodEntry(_gradual_variant(0.0, uniform=True), _schedule(0.3, 0.31, True)),
    # session 9: +late: the Fisher of the last 5% of the steps before the cut only (steps 25-30%)
    "gradual+os+late": MethodEntry(_gradual_variant(0.0), _schedule(0.3, 0.31, True, fisher_from=0.25)),
    # +taylor: two-stage's ranking (Taylor |w·g| per unit, 4 batches at the cut) in our cut, masks and schedule
    "gradual+os+u+taylor": MethodEntry(_gradual_variant(0.0, uniform=True), _schedule(0.3, 0.31, True, taylor=True)),
    # session 10: the same with the scores' learning rate ~0: the four steps between the cut and the freeze keep the
    # Taylor selection (Adam moves every score ~gate_lr per step, ranks are ~5e-5 apart: one step reorders the edge)
    "gradual+os+u+taylor+lr0": MethodEntry(
        _gradual_variant(0.0, uniform=True, gate_lr=1e-9), _schedule(0.3, 0.31, True, taylor=True)
    ),
    # +lr0 without Taylor: our Fisher-per-cost selection of the dense 30% (widths free), kept as cut; and the `gradual`
    # default's phases (dense 10% / warm-up 20% / freeze 30%) with the scores kept at their Fisher ranks
    "gradual+os+lr0": MethodEntry(_gradual_variant(0.0, gate_lr=1e-9), _schedule(0.3, 0.31, True)),
    "gradual+lr0": MethodEntry(_gradual_variant(0.2, gate_lr=1e-9), _schedule(0.1, 0.3, True)),
    "l0+recipe+recent": MethodEntry(_l0_variant(), _recipe_variant(importance_decay=0.9)),
    "l0+d25": MethodEntry(_l0_variant(), _recipe_variant(dense=0.25, warmup=0.05, freeze=0.3)),
    # session 8: a longer target warm-up (15% instead of 5%) for high targets, where the gates lagged (90%: expected
    # sparsity 0.60 at the freeze, and the exact-target cut closed every head)
    "l0+w15": MethodEntry(_l0_variant(), _recipe_variant(dense=0.3, warmup=0.15, freeze=0.5)),
    "l0+imp+early+reset": MethodEntry(_l0_variant(warmup=0.1, init_from_importance=True), _schedule(0.1, 0.25, True)),
}
#: Rows run by default (the study's variants are run by name with `--methods`).
DEFAULT_METHODS = ("l0", "l0+distill", "ste", "polarization", "gradual")


def torch_pruning_two_stage_kd(model: nn.Module, sparsity: float, task: Task, cfg: BenchConfig) -> nn.Module:
    """The two-stage pipeline with the same distillation as ``l0+recipe+kd``: the dense model at the cut teaches the
    pruned one through its fine-tuning (the control that tells a distillation gain from a learned-mask gain)."""
    return torch_pruning_two_stage(model, sparsity, task, cfg, teacher=SnapshotTeacher())


def torch_pruning_two_stage(
    model: nn.Module, sparsity: float, task: Task, cfg: BenchConfig, teacher: SnapshotTeacher | None = None
) -> nn.Module:
    """Train → prune (torch-pruning, heads + FFN channels, one shot) → fine-tune; ``cfg.steps`` steps in all.

    The budget matches ours: ``round(sparsity · heads)`` whole heads per layer, then the share of FFN channels
    that brings the removed encoder parameters to ``sparsity`` (the hidden size is kept, like ours).
    """
    import torch_pruning as tp

    first = int(cfg.steps * cfg.prune_at)
    fit(model, task, cfg, first)
    attentions = [m for m in model.modules() if hasattr(m, "query") and hasattr(m, "num_attention_heads")]
    heads = attentions[0].num_attention_heads
    hidden, head_dim = attentions[0].query.in_features, attentions[0].attention_head_size
    ffn_layers = [m for n, m in model.named_modules() if n.endswith("intermediate.dense")]
    ffn = ffn_layers[0].out_features
    per_head = 4 * hidden * head_dim + 3 * head_dim  # q/k/v rows with biases + o columns
    per_channel = 2 * hidden + 1  # up row with bias + down column
    dense_layer = heads * per_head + ffn * per_channel + 2 * hidden  # + the o and down biases
    heads_removed = min(heads - 1, round(heads * sparsity))
    ffn_ratio = (sparsity * dense_layer - heads_removed * per_head) / (ffn * per_channel)
    ffn_ratio = min(max(ffn_ratio, 0.0), 0.95)
    num_heads = {getattr(a, p): heads for a in attentions for p in ("query", "key", "value")}
    # hidden-size outputs (residual writes, pooler, classifier) are not pruned: only heads and FFN channels
    ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(("output.dense",))]
    ignored += [
        m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ("pooler" in n or "classifier" in n)
    ]
    ids, mask = task.train.tensors[0][:2], task.train.tensors[1][:2]
    importance = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs={"input_ids": ids, "attention_mask": mask},
        importance=importance,
        pruning_ratio=ffn_ratio,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=heads_removed / heads,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
    )
    if cfg.importance == "taylor":  # first-order Taylor: |w · dL/dw| summed over each group, on task batches
        model.eval().zero_grad()
        for ids, mask, labels in list(torch.utils.data.DataLoader(task.train, batch_size=cfg.batch_size))[
            : cfg.taylor_batches
        ]:
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    if teacher is not None:
        teacher.take(model)
    pruner.step()
    model.zero_grad(set_to_none=True)
    for attention in attentions:  # torch-pruning changes the layers; the module's bookkeeping follows them
        attention.num_attention_heads = pruner.num_heads[attention.query]
        attention.all_head_size = attention.query.out_features
    model.config.num_attention_heads = attentions[0].num_attention_heads
    model.config.intermediate_size = ffn_layers[0].out_features
    return fit_after_cut(model, task, cfg, teacher=teacher)


def lightning_model_pruning(model: nn.Module, sparsity: float, task: Task, cfg: BenchConfig) -> nn.Module:
    """Lightning's ``ModelPruning``: global L1 unstructured pruning of the encoder's linear weights.

    Pruned once at the end of the first epoch (``prune_at`` of the steps, like the two-stage baseline); the masks
    stay on while training goes on and are made permanent at the end. Shapes do not change.
    """
    from lightning.pytorch.callbacks import ModelPruning

    callback = ModelPruning(
        pruning_fn="l1_unstructured",
        parameters_to_prune=[(m, "weight") for m in encoder_linears(model)],
        amount=sparsity,
        use_global_unstructured=True,
        apply_pruning=lambda epoch: epoch == 0,
        make_pruning_permanent=True,
        verbose=0,
    )
    return fit(model, task, cfg, cfg.steps, [callback])


#: Baselines: kind -> (row name, function(model, sparsity, task, cfg) -> trained model). ``two-stage+kd`` (a study
#: control for the distillation lever) runs only when asked for with ``--baselines``.
BASELINES: dict[str, tuple[str, Callable[[nn.Module, float, Task, BenchConfig], nn.Module]]] = {
    "two-stage": ("torch-pruning", torch_pruning_two_stage),
    "two-stage+kd": ("torch-pruning+KD", torch_pruning_two_stage_kd),
    "unstructured": ("ModelPruning", lightning_model_pruning),
}


DEFAULT_BASELINES = ("two-stage", "unstructured")


def unbenchmarked_methods(model_fn: Callable[[], nn.Module]) -> dict[str, str]:
    """Registered methods without a :data:`METHODS` entry, with the reason (attach error, or "no entry")."""
    out = {}
    for name in lp.methods.available_methods():
        if name in METHODS:
            continue
        try:
            lp.attach(model_fn(), lp.methods.method_config_class(name)()).detach()
            out[name] = "attaches to this model but has no entry in METHODS"
        except Exception as err:  # noqa: BLE001 - any refusal: report it, go on with the others
            out[name] = f"no entry in METHODS; attach with default arguments fails: {str(err).splitlines()[0][:110]}"
    return out


def run(model_fn: Callable[[], nn.Module], task: Task, cfg: BenchConfig, log=print) -> list[Row]:
    """Every row of the table, trained one after the other, then timed side by side."""
    jobs: list[tuple[str, str, float, Callable[[nn.Module], nn.Module]]] = [("dense", "dense", 0.0, lambda m: m)]
    names = (
        cfg.methods
        if cfg.methods is not None
        else tuple(n for n in DEFAULT_METHODS if n.split("+")[0] in lp.methods.available_methods())
    )
    for sparsity in cfg.sparsities:
        for name in names:
            entry = METHODS[name]
            jobs.append(
                ("ours", name, sparsity, lambda m, s=sparsity, e=entry: e.train(m, e.config(s, cfg), task, cfg))
            )
        for kind, (label, fn) in BASELINES.items():
            if kind not in (cfg.baselines if cfg.baselines is not None else DEFAULT_BASELINES):
                continue
            jobs.append((kind, label, sparsity, lambda m, s=sparsity, f=fn: f(m, s, task, cfg)))
    dense_linear = None
    rows: list[Row] = []
    for kind, name, sparsity, train in jobs:
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)  # the same classifier-head init in every row
        model = model_fn()
        if kind == "dense":
            model = fit(model, task, cfg, cfg.steps if cfg.train_dense else 0)
        else:
            model = train(model)
        model.eval()
        seconds = time.perf_counter() - start
        linear, zeros = _linear_stats(model)
        dense_linear = dense_linear or linear
        row = Row(
            kind=kind,
            name=name,
            target=sparsity,
            accuracy=accuracy(model, task.test),
            params=sum(p.numel() for p in model.parameters()),
            encoder_sparsity=1.0 - linear / dense_linear,
            zero_fraction=zeros,
            train_s=seconds,
            model=model,
        )
        rows.append(row)
        log(
            f"  {kind:<12} {name:<14} @{sparsity:.0%}: accuracy {row.accuracy:.3f}, {row.params:,} params, "
            f"encoder sparsity {row.encoder_sparsity:.3f} (zeros {row.zero_fraction:.3f}), {seconds:.0f}s"
        )
    ids = task.test.tensors[0][: cfg.batch_size]
    mask = task.test.tensors[1][: cfg.batch_size]

    def forward(model):
        def call():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)

        return call

    times = interleaved_median({i: forward(r.model) for i, r in enumerate(rows)}, repeats=cfg.latency_repeats)
    for i, row in enumerate(rows):
        row.latency_ms = times[i] * 1e3
    return rows


# -- reporting ------------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    dense = rows[0]
    lines = [
        "| row | target | accuracy | kept vs dense | parameters | params ratio | encoder sparsity | zero weights "
        "| latency (ms) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row.record(dense)
        label = "dense fine-tune" if row.kind == "dense" else f"{row.name} ({row.kind})"
        lines.append(
            f"| {label} | {row.target:.0%} | {row.accuracy:.3f} | {r['accuracy_kept']:.3f} | {row.params:,} | "
            f"{r['params_ratio']:.2f}× | {row.encoder_sparsity:.2f} | {row.zero_fraction:.2f} | "
            f"{row.latency_ms:.1f} | {r['speedup']:.2f}× |"
        )
    return "\n".join(lines)


def headline(rows: list[Row], at: float = 0.5, n_test: int | None = None) -> str:
    """One line: each row at the sparsity nearest ``at``, relative to dense; with ``n_test``, the accuracy's
    binomial standard error, so that a reader can tell a difference from noise."""
    dense = rows[0]
    near = min((r.target for r in rows[1:]), key=lambda t: abs(t - at), default=at)
    parts = []
    for row in rows[1:]:
        if row.target != near:
            continue
        r = row.record(dense)
        if row.kind == "ours":
            parts.insert(
                0,
                f"{row.name} @{near:.0%}: {r['accuracy_kept']:.2f} of dense accuracy at "
                f"{r['params_ratio']:.2f}× params, {r['speedup']:.2f}× speed-up",
            )
        else:
            parts.append(
                f"{row.name} ({row.kind}): {r['accuracy_kept']:.2f} at {r['params_ratio']:.2f}× params, "
                f"{r['speedup']:.2f}× speed-up"
            )
    noise = ""
    if n_test:
        noise = f", standard error ±{(dense.accuracy * (1 - dense.accuracy) / n_test) ** 0.5:.3f}"
    return f"headline (dense accuracy {dense.accuracy:.3f}{noise}): " + "; ".join(parts)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = rows[0]
    ax.axhline(dense.accuracy, color="gray", linestyle="--", label=f"dense ({dense.params / 1e6:.1f}M)")
    markers = {"ours": "o", "two-stage": "s", "unstructured": "^", "two-stage+kd": "D"}
    for kind in KINDS[1:]:
        for name in dict.fromkeys(r.name for r in rows if r.kind == kind):
            sel = sorted((r for r in rows if r.kind == kind and r.name == name), key=lambda r: r.params)
            ax.plot(
                [r.params / 1e6 for r in sel], [r.accuracy for r in sel], marker=markers[kind], label=f"{name} ({kind})"
            )
            for r in sel:
                ax.annotate(
                    f"{r.target:.0%}",
                    (r.params / 1e6, r.accuracy),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seeds_table(per_seed: dict[int, list[Row]]) -> str:
    """Accuracy per row over seeds: mean, half the min–max spread, each seed's value, and the gap to the two-stage
    baseline at the same target (mean of the per-seed differences: the same batches in both rows)."""
    seeds = sorted(per_seed)
    keys = list(dict.fromkeys((r.kind, r.name, r.target) for r in per_seed[seeds[0]]))
    acc = {
        key: [next(r.accuracy for r in per_seed[s] if (r.kind, r.name, r.target) == key) for s in seeds] for key in keys
    }
    lines = [
        "| row | target | accuracy mean ± half-range | per seed | vs two-stage (mean of per-seed differences) |",
        "|---|---|---|---|---|",
    ]
    for kind, name, target in keys:
        values = acc[(kind, name, target)]
        mean, half = sum(values) / len(values), (max(values) - min(values)) / 2
        base = next((acc[k] for k in keys if k[0] == "two-stage" and k[2] == target), None)
        gap = (
            ""
            if base is None or kind == "two-stage"
            else f"{sum(v - b for v, b in zip(values, base)) / len(values):+.3f}"
        )
        label = "dense fine-tune" if kind == "dense" else f"{name} ({kind})"
        lines.append(
            f"| {label} | {target:.0%} | {mean:.3f} ± {half:.3f} | {', '.join(f'{v:.3f}' for v in values)} | {gap} |"
        )
    return "\n".join(lines)


def _run_seeds(model_fn, task: Task, cfg: BenchConfig, seeds: list[int], output: Path) -> list[Row]:
    per_seed: dict[int, list[Row]] = {}
    for seed in seeds:
        cfg.seed = seed
        print(f"seed {seed}")
        per_seed[seed] = run(model_fn, task, cfg)
        for row in per_seed[seed]:
            row.model = None  # keep memory flat across seeds
    output.mkdir(parents=True, exist_ok=True)
    md = seeds_table(per_seed)
    (output / "quality_seeds.md").write_text(md + "\n")
    record = {"config": asdict(cfg), "seeds": {s: [r.record(rows[0]) for r in rows] for s, rows in per_seed.items()}}
    (output / "quality_seeds.json").write_text(json.dumps(record, indent=2))
    print(md)
    return [r for rows in per_seed.values() for r in rows]


# -- the real task --------------------------------------------------------------------------------------------
def minilm_task(
    cfg: BenchConfig, n_train_per_class: int, n_test_per_class: int, task: str = "docstring-library"
) -> tuple[Callable[[], nn.Module], Task]:
    from quality_data import TASKS, make_docstring_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_prune.pretrained import minilm_path

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, test = make_docstring_dataset(n_train_per_class, n_test_per_class, task)
    labels = TASKS[task].libraries

    def encode(examples):
        enc = tokenizer(
            [e.text for e in examples],
            padding="max_length",
            truncation=True,
            max_length=cfg.max_length,
            return_tensors="pt",
        )
        return torch.utils.data.TensorDataset(
            enc["input_ids"], enc["attention_mask"], torch.tensor([e.label for e in examples])
        )

    def model_fn():
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))

    return model_fn, Task(task, encode(train), encode(test), len(labels))


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and sentences (minutes on 2 cores)")
    parser.add_argument("--output", type=Path, default=Path("outputs/quality"))
    parser.add_argument("--importance", choices=("taylor", "magnitude"), default="taylor")
    from quality_data import TASKS

    parser.add_argument(
        "--task",
        choices=tuple(TASKS),
        default="docstring-library",
        help="8 libraries (default), or 16 (full budget: 400 steps of 16x64, 300 / 80 sentences per class)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (overrides the mode's)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None, help="fractions of encoder params removed")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=sorted(METHODS),
        default=None,
        help="our rows (default: all; none: baselines only)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run every row per seed; mean ± spread")
    parser.add_argument(
        "--baselines", nargs="*", choices=sorted(BASELINES), default=None, help="baseline rows (default: all)"
    )
    parser.add_argument(
        "--no-dense",
        action="store_true",
        help="skip the dense fine-tune (its row is the untrained model): for study runs whose dense rows ran before",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lightning.pytorch  # noqa: F401 - configures its logger on import; quieten it afterwards

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if args.quick:  # one budget (50%), every method: a few minutes on 2 cores
        cfg, n_train, n_test = BenchConfig(steps=100, max_length=32, importance=args.importance), 200, 50
        cfg.sparsities = (0.5,)
    elif args.task == "docstring-library-16":
        cfg, n_train, n_test = BenchConfig(steps=400, max_length=64, importance=args.importance), 300, 80
    else:
        cfg, n_train, n_test = BenchConfig(steps=300, max_length=40, importance=args.importance), 500, 125
    if args.steps is not None:
        cfg.steps = args.steps
    if args.sparsities is not None:
        cfg.sparsities = tuple(args.sparsities)
    if args.methods is not None:
        cfg.methods = tuple(args.methods)
    if args.baselines is not None:
        cfg.baselines = tuple(args.baselines)
    cfg.train_dense = not args.no_dense
    from quality_data import source_versions

    model_fn, task = minilm_task(cfg, n_train, n_test, args.task)
    print(
        f"MiniLM-L6 on {task.name}: {len(task.train)} train / {len(task.test)} test sentences (held-out files), "
        f"{task.num_labels} classes; {cfg.steps} steps of batch {cfg.batch_size}x{cfg.max_length} per row"
    )
    for name, why in unbenchmarked_methods(model_fn).items():
        if name.split("+")[0] in {n.split("+")[0] for n in METHODS}:
            continue
        print(f"  method {name!r} skipped: {why}")
    if args.seeds and len(args.seeds) > 1:
        return _run_seeds(model_fn, task, cfg, args.seeds, args.output)
    if args.seeds:
        cfg.seed = args.seeds[0]
    rows = run(model_fn, task, cfg)
    args.output.mkdir(parents=True, exist_ok=True)
    dense = rows[0]
    record = {
        "config": asdict(cfg),
        "task": task.name,
        "n_train": len(task.train),
        "n_test": len(task.test),
        "source_versions": source_versions(args.task),
        "rows": [r.record(dense) for r in rows],
    }
    (args.output / "quality.json").write_text(json.dumps(record, indent=2))
    md = table(rows)
    (args.output / "quality.md").write_text(md + "\n")
    plot(rows, args.output / "quality.png", f"MiniLM-L6, {task.name}, {cfg.steps} steps per row")
    print(md)
    print(f"results: {args.output}/quality.{{json,md,png}}")
    print(headline(rows, n_test=len(task.test)))
    return rows


if __name__ == "__main__":
    main()
