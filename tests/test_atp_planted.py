"""ATP on a planted task: only a known subset of KV groups and FFN channels carries the teacher's signal.

The student is the teacher with the planted-away units writing loud noise instead of nothing (as in
test_planted_structure.py), wrapped with peft LoRA. ATP's alternating generator / LoRA steps at the matching
target must find exactly the planted units, meet the budget, zero the pruned units' LoRA groups and export a
model equal to the gated one.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.methods.atp import ATPController

L, NKV, FFN, NREP_HD = 2, 4, 96, 2 * 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _plant(teacher, student, keep_groups, keep_channels):
    """Teacher: dropped units are silenced. Student: the same weights, but dropped units write loud noise."""
    gen = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for layer, (t_layer, s_layer) in enumerate(zip(teacher.model.layers, student.model.layers)):
            for group in range(NKV):
                if group in keep_groups[layer]:
                    continue
                cols = slice(group * NREP_HD, (group + 1) * NREP_HD)
                t_layer.self_attn.o_proj.weight[:, cols] = 0.0
                noise = torch.randn(s_layer.self_attn.o_proj.weight[:, cols].shape, generator=gen)
                s_layer.self_attn.o_proj.weight[:, cols] = noise * 0.5
            dropped = torch.ones(FFN, dtype=torch.bool)
            dropped[keep_channels[layer]] = False
            t_layer.mlp.down_proj.weight[:, dropped] = 0.0
            noise = torch.randn(s_layer.mlp.down_proj.weight[:, dropped].shape, generator=gen)
            s_layer.mlp.down_proj.weight[:, dropped] = noise * 0.5


def _precision_recall(mask: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Precision/recall of the *pruned* units (mask == 0) against the planted pruned units."""
    predicted, planted = mask == 0, truth == 0
    tp = float((predicted & planted).sum())
    return tp / max(float(predicted.sum()), 1.0), tp / max(float(planted.sum()), 1.0)


def _distill_loss(model, batch):
    logits = model(input_ids=batch["input_ids"]).logits
    return torch.nn.functional.mse_loss(logits, batch["target"]) / batch["target"].var()


def test_atp_recovers_planted_units_zeroes_pruned_lora_and_exports():
    start = time.perf_counter()
    torch.manual_seed(0)
    teacher = tiny_causal_lm("llama", seed=0)
    base = tiny_causal_lm("llama", seed=0)
    keep_groups = [{0, 3}, {1, 2}]
    gen = torch.Generator().manual_seed(7)
    keep_channels = [torch.randperm(FFN, generator=gen)[:48] for _ in range(L)]
    _plant(teacher, base, keep_groups, keep_channels)
    student = with_lora(base)

    truth = {
        "heads": torch.tensor([[1.0 if g in keep_groups[l] else 0.0 for g in range(NKV)] for l in range(L)]),
        "ffn": torch.zeros(L, FFN),
    }
    for l in range(L):
        truth["ffn"][l, keep_channels[l]] = 1.0

    config = lp.ATPConfig(structures=("heads", "ffn"), target_sparsity=0.5, control_steps=CONTROL, gate_lr=GATE_LR)
    pruner = lp.attach(student, config)
    planted_sparsity = float(pruner.cost.sparsity(truth))
    config.target_sparsity = planted_sparsity  # the matching target
    pruner.state.regularizer.target_sparsity = planted_sparsity
    atp = ATPController(pruner)
    lora_opt, gen_opt = atp.optimizers(lr=LORA_LR)

    data_gen = torch.Generator().manual_seed(1)

    def make_batch():
        ids = torch.randint(0, 128, (8, 12), generator=data_gen)
        with torch.no_grad():
            return {"input_ids": ids, "target": teacher(input_ids=ids).logits}

    student.train()
    for _ in range(CONTROL + FROZEN):
        atp.generator_step(make_batch(), gen_opt, loss_fn=_distill_loss)  # held-out batch; skipped once frozen
        atp.lora_step(make_batch(), lora_opt, loss_fn=_distill_loss)
    assert atp.frozen and atp.generator_steps == CONTROL

    masks = pruner.deterministic_masks()
    report = {name: _precision_recall(masks[name], truth[name]) for name in ("heads", "ffn")}
    sparsity = float(pruner.cost.sparsity(masks))
    pruned_norm = atp.pruned_lora_norm()

    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(99))
    student.eval()
    with torch.no_grad():
        gated = student(input_ids=ids).logits  # merged path, hard eval decisions
    with atp.mode("lora"), torch.no_grad():
        lora_path = student(input_ids=ids).logits  # frozen path m ⊙ W x + B A x
    compact = pruner.export()  # raises unless compact == gated eval model
    with torch.no_grad():
        exported = compact(input_ids=ids).logits
    scale = float(gated.abs().max())
    export_rel = float((exported - gated).abs().max()) / scale
    lora_rel = float((lora_path - gated).abs().max()) / scale
    elapsed = time.perf_counter() - start
    summary = (
        f"planted recovery (precision, recall of pruned units): {report}; sparsity {sparsity:.4f} "
        f"(target {planted_sparsity:.4f}); max pruned LoRA group norm {pruned_norm!r}; export rel diff "
        f"{export_rel:.2e}; frozen-path vs gated rel diff {lora_rel:.2e}; {elapsed:.1f} s"
    )
    print(summary)
    for name, (precision, recall) in report.items():
        assert precision >= 0.9 and recall >= 0.9, (name, summary)
    assert abs(sparsity - planted_sparsity) <= 0.02, summary
    assert abs(pruner.last_report.exact_sparsity - planted_sparsity) <= 0.02, summary
    assert pruned_norm == 0.0, summary
    assert export_rel <= 1e-4, summary
    assert lora_rel <= 1e-4, summary  # pruned LoRA groups are zero: the trained model is the deployed one


CONTROL, FROZEN, GATE_LR, LORA_LR = 150, 30, 1e-2, 1e-3
