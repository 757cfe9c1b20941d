"""Planted structure: only a known subset of heads and FFN channels carries the signal; L0 gates trained
at the matching target must find exactly that subset (precision and recall >= 0.9 per structure)."""

from __future__ import annotations

import torch
from conftest import tiny_causal_lm

import lightning_prune as lp


def _plant(teacher, student, keep_groups, keep_channels, nrep_hd):
    """Teacher: dropped units are silenced. Student: the same weights, but dropped units write loud noise."""
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for layer, (t_layer, s_layer) in enumerate(zip(teacher.model.layers, student.model.layers)):
            for group in range(4):
                if group in keep_groups[layer]:
                    continue
                cols = slice(group * nrep_hd, (group + 1) * nrep_hd)
                t_layer.self_attn.o_proj.weight[:, cols] = 0.0
                noise = torch.randn(s_layer.self_attn.o_proj.weight[:, cols].shape, generator=gen)
                s_layer.self_attn.o_proj.weight[:, cols] = noise * 0.5
            dropped = torch.ones(t_layer.mlp.down_proj.weight.shape[1], dtype=torch.bool)
            dropped[keep_channels[layer]] = False
            t_layer.mlp.down_proj.weight[:, dropped] = 0.0
            noise = torch.randn(s_layer.mlp.down_proj.weight[:, dropped].shape, generator=gen)
            s_layer.mlp.down_proj.weight[:, dropped] = noise * 0.5


def _precision_recall(mask: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Precision/recall of the *pruned* units (mask == 0) against the planted pruned units."""
    predicted, planted = mask == 0, truth == 0
    tp = float((predicted & planted).sum())
    return tp / max(float(predicted.sum()), 1.0), tp / max(float(planted.sum()), 1.0)


def planted_models():
    """``(teacher, student, truth)``: the tiny Llama pair with 2 of 4 KV groups and 48 of 96 FFN channels per layer
    planted as useful (``truth``: 1 = keep); the student's weights are frozen (only gates learn)."""
    torch.manual_seed(0)
    teacher = tiny_causal_lm("llama", seed=0)
    student = tiny_causal_lm("llama", seed=0)
    keep_groups = [{0, 3}, {1, 2}]
    gen = torch.Generator().manual_seed(7)
    keep_channels = [torch.randperm(96, generator=gen)[:48] for _ in range(2)]
    _plant(teacher, student, keep_groups, keep_channels, 2 * 16)
    student.requires_grad_(False)
    truth = {
        "heads": torch.tensor([[1.0 if g in keep_groups[l] else 0.0 for g in range(4)] for l in range(2)]),
        "ffn": torch.zeros(2, 96),
    }
    for l in range(2):
        truth["ffn"][l, keep_channels[l]] = 1.0
    return teacher, student, truth


def fit_to_teacher(student, teacher, pruner, optimizer, steps: int) -> None:
    """``steps`` steps of the student (gates only) matching the teacher's logits (MSE / variance) plus the penalty."""
    student.train()
    data_gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 128, (8, 12), generator=data_gen)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        mse = torch.nn.functional.mse_loss(student(input_ids=ids).logits, target) / target.var()
        loss = mse + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_l0_gates_recover_planted_heads_and_channels():
    teacher, student, truth = planted_models()
    config = lp.L0Config(
        structures=("heads", "ffn"), target_sparsity=0.5, gate_lr=0.1, lagrangian_lr=0.01, warmup_steps=100
    )
    pruner = lp.attach(student, config)
    planted_sparsity = float(pruner.cost.sparsity(truth))
    pruner.state.regularizer.target_sparsity = planted_sparsity
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    pruner.hook_optimizer(optimizer)

    fit_to_teacher(student, teacher, pruner, optimizer, 300)

    masks = pruner.deterministic_masks()
    report = {}
    for name in ("heads", "ffn"):
        precision, recall = _precision_recall(masks[name], truth[name])
        report[name] = (precision, recall)
    print("planted recovery (precision, recall of pruned units):", report)
    for name, (precision, recall) in report.items():
        assert precision >= 0.9 and recall >= 0.9, (name, report)
    assert abs(float(pruner.cost.sparsity(masks)) - planted_sparsity) <= 0.02
