"""Optimizer surgery for the Lightning integration: gates and multipliers in their own parameter groups.

A user's ``configure_optimizers`` usually passes ``self.parameters()``, which includes the gates and the
Lagrange multipliers with the model's learning rate and weight decay. :func:`regroup_optimizer_` removes
them from the user's groups and adds two groups of ours (``config.gate_lr`` / ``config.lagrangian_lr``,
no weight decay), so every parameter is in exactly one group. It is deterministic, so an optimizer state
saved after regrouping loads into an optimizer regrouped the same way (Lightning restores optimizer state
after ``on_fit_start``, which is where the callback regroups).

Example::

    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.01)
    regroup_optimizer_(optimizer, pruner)
    [g["name"] for g in optimizer.param_groups][-2:]  # ['lightning_prune.gates', 'lightning_prune.multipliers']
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_prune.contracts import check_optimizer_holds_gates
from lightning_prune.pruner import Pruner

GATE_GROUP = "lightning_prune.gates"
MULTIPLIER_GROUP = "lightning_prune.multipliers"
#: A method's own trainable modules (PAT's HSMs): the user's learning rate and scheduler, no weight decay, and
#: trained in every phase (its lr is not in :func:`group_learning_rates`, so it is never set to 0).
MODULE_GROUP = "lightning_prune.modules"
OUR_GROUPS = (GATE_GROUP, MULTIPLIER_GROUP, MODULE_GROUP)

# keys of a group that describe parameters, not hyper-parameters: never copied into our groups
_NOT_COPIED = ("params", "name", "lr", "initial_lr", "weight_decay")


def group_learning_rates(pruner: Pruner) -> dict[str, float]:
    """The learning rate of each of our groups: ``gate_lr`` and ``lagrangian_lr`` (default ``gate_lr``)."""
    gate_lr = pruner.config.gate_lr
    return {GATE_GROUP: gate_lr, MULTIPLIER_GROUP: pruner.config.lagrangian_lr or gate_lr}


def regroup_optimizer_(optimizer: torch.optim.Optimizer, pruner: Pruner) -> tuple[int, int]:
    """Move the pruner's parameters out of the user's groups into two groups of their own, in place.

    Existing groups keep their positions (a user group left empty stays, empty), so learning-rate schedulers
    built on the user's groups still line up; groups already named ``lightning_prune.*`` (from
    :meth:`Pruner.param_groups` or an earlier regrouping) are reused. Missing groups of ours are appended; they
    copy the other hyper-parameters (betas, momentum, scheduler keys such as ``max_lr``) of the user group the
    parameters came from; ``lr`` and ``weight_decay`` are ours. Optimizer state is keyed by parameter, so state
    the optimizer already holds survives the regrouping.

    Returns:
        ``(groups_before, source_index)``: the number of groups before anything was appended, and the index of
        the user group that held our parameters (0 if none did); :func:`extend_schedulers_` needs both.
    """
    ours = {
        GATE_GROUP: pruner.gate_parameters(),
        MULTIPLIER_GROUP: pruner.multiplier_parameters(),
        MODULE_GROUP: pruner.module_parameters(),
    }
    our_ids = {id(p) for params in ours.values() for p in params}
    lrs = group_learning_rates(pruner)
    groups_before = len(optimizer.param_groups)
    source_index = 0
    existing: dict[str, dict[str, Any]] = {}
    for index, group in enumerate(optimizer.param_groups):
        name = group.get("name")
        if name in OUR_GROUPS:
            existing[name] = group
            continue
        params = [p for p in group["params"] if id(p) not in our_ids]
        if len(params) != len(group["params"]) and not source_index:
            source_index = index
        group["params"] = params
    template = {k: v for k, v in optimizer.param_groups[source_index].items() if k not in _NOT_COPIED}
    source_lr = optimizer.param_groups[source_index]
    lrs.setdefault(MODULE_GROUP, source_lr.get("initial_lr", source_lr["lr"]))
    uses_initial_lr = any("initial_lr" in g for g in optimizer.param_groups)
    for name, params in ours.items():
        if not params:
            continue
        if name in existing:
            existing[name].update(params=params, lr=lrs[name], weight_decay=0.0)
            continue
        group = dict(template, params=params, lr=lrs[name], weight_decay=0.0, name=name)
        if uses_initial_lr:
            group["initial_lr"] = lrs[name]
        optimizer.add_param_group(group)
    check_optimizer_holds_gates(optimizer, pruner)  # e.g. an optimizer wrapper whose add_param_group drops them
    pruner.stop_update_check()  # the groups are ours: the first-steps check of plain loops is not needed
    return groups_before, source_index


# per-group lists of torch/transformers schedulers; these lists are not per group
_NOT_PER_GROUP = ("_schedulers", "_milestones", "milestones", "_schedule_phases")


def extend_schedulers_(schedulers: list[Any], groups_before: int, source_index: int, added: int) -> None:
    """Give schedulers built before :func:`regroup_optimizer_` appended ``added`` groups an entry for each.

    torch schedulers keep per-group lists (``base_lrs``, ``lr_lambdas``, ``min_lrs``, ...) and zip them strictly
    with ``optimizer.param_groups``. The new entries copy those of the group our parameters came from; the
    callback sets our groups' ``lr`` before every step, so what a scheduler writes there has no effect.
    """
    if added <= 0:
        return
    for scheduler in schedulers:
        extend_schedulers_(list(getattr(scheduler, "_schedulers", [])), groups_before, source_index, added)
        for name, value in vars(scheduler).items():
            if name not in _NOT_PER_GROUP and isinstance(value, list) and len(value) == groups_before:
                value.extend([value[source_index]] * added)


def reset_model_state_(optimizer: torch.optim.Optimizer, pruner: Pruner) -> int:
    """Forget the optimizer state (Adam's moments and step counts, SGD's momentum) of every parameter that is not
    ours; returns how many parameters had state.

    Called when the masks freeze (``reset_optimizer_at_freeze``): the model that fine-tunes from there is the final,
    smaller architecture, and moments accumulated under sampled masks describe another one. The two-stage
    pipeline (prune, then fine-tune) gets the same fresh start from its new optimizer; on the quality benchmark it
    helped every L0 schedule tried (issue #18, docs/benchmarks.md). Learning rates and schedulers are untouched.
    """
    ours = {id(p) for p in pruner.state.parameters()}
    cleared = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in ours and optimizer.state.pop(p, None) is not None:
                cleared += 1
    return cleared


def set_group_learning_rates_(optimizer: torch.optim.Optimizer, pruner: Pruner, active: bool) -> None:
    """Our groups' lr: the configured values while pruning (``active``), 0 otherwise.

    A zero learning rate (rather than ``requires_grad=False``) keeps every gate "used" in each step, which DDP
    without ``find_unused_parameters`` needs, and stops Adam's momentum from moving frozen gates.
    """
    lrs = group_learning_rates(pruner)
    for group in optimizer.param_groups:
        name = group.get("name")
        if name in lrs:
            group["lr"] = lrs[name] if active else 0.0
