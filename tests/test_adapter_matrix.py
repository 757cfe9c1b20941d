"""Shared check table: adapter × structure × LoRA, each row running the same three checks.

1. export equivalence: the compact model computes what the gated model computes (max abs diff ≤ rtol · scale);
2. exact counts: the compact model's ``numel`` equals the cost model's exact count at the final masks;
3. save / reload: the saved compact model reloads (``load_compact`` for transformers, pruning-history replay
   ``load_pruned`` for the dependency_graph adapter) and gives the same outputs.

Builders come from the per-family test modules. The dependency_graph rows have no LoRA variant: peft wrappers
are not traced by torch-pruning (the adapter is for plain models).
"""

from __future__ import annotations

import pytest
import torch
from cnn_models import image_batch, tiny_mlp, tiny_resnet
from conftest import PHI3_LORA_TARGETS, randomize_gates, tiny_causal_lm, tiny_phi3, with_lora
from test_bert_adapter import LORA_TARGETS as BERT_LORA
from test_bert_adapter import tiny_encoder
from test_gpt2_adapter import LORA_TARGETS as GPT2_LORA
from test_gpt2_adapter import tiny_gpt2

import lightning_prune as lp
from lightning_prune.export.history import load_pruned, save_pruned
from lightning_prune.export.report import count_parameters

TRANSFORMERS = {
    "llama": (lambda: tiny_causal_lm("llama"), None),  # GQA: 8 query heads share 4 KV heads
    "phi3": (lambda: tiny_phi3(), PHI3_LORA_TARGETS),  # fused qkv_proj / gate_up_proj
    "gpt2": (lambda: tiny_gpt2(), GPT2_LORA),
    "bert": (lambda: tiny_encoder(), BERT_LORA),
}
PLAIN = {"cnn": (tiny_resnet, image_batch), "mlp": (tiny_mlp, lambda: torch.randn(2, 10))}

ROWS = [(family, (s,), lora) for family in TRANSFORMERS for s in ("heads", "ffn", "hidden") for lora in (False, True)]
ROWS += [(family, ("channels",), False) for family in PLAIN]
ROW_IDS = [f"{f}-{'+'.join(s)}-{'lora' if lora else 'plain'}" for f, s, lora in ROWS]


def _attach(family: str, structures: tuple[str, ...], lora: bool) -> lp.Pruner:
    config = lp.L0Config(structures=structures, target_sparsity=0.1)
    if family in PLAIN:
        build, inputs = PLAIN[family]
        return lp.attach(build(), config, example_inputs=inputs())
    build, targets = TRANSFORMERS[family]
    model = build()
    if lora:
        model = with_lora(model) if targets is None else with_lora(model, targets=targets)
    return lp.attach(model, config)


def _outputs(pruner: lp.Pruner, model: torch.nn.Module) -> torch.Tensor:
    inputs = pruner.adapter.example_inputs(2, 7, torch.Generator().manual_seed(11))
    with torch.no_grad():
        return pruner.adapter.outputs(model.eval(), inputs)


@pytest.mark.parametrize("family,structures,lora", ROWS, ids=ROW_IDS)
def test_adapter_matrix(tmp_path, family, structures, lora):
    pruner = _attach(family, structures, lora)
    randomize_gates(pruner, seed=len(family) + len(structures[0]))
    masks = pruner.deterministic_masks()
    binary = {k: (m != 0).to(torch.float64) for k, m in masks.items()}
    assert 0 < sum(int(m.sum()) for m in binary.values()) < sum(m.numel() for m in binary.values())

    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= pruner.config.export_rtol * report.reference_scale  # 1. equivalence
    exact = int(round(float(pruner.cost.total(binary)[0])))
    assert count_parameters(compact) == exact == report.params_after < report.params_before  # 2. exact counts

    expected = _outputs(pruner, compact)
    if family in PLAIN:  # 3. save / reload
        save_pruned(compact, tmp_path / "compact")
        reloaded = load_pruned(tmp_path / "compact", model_factory=PLAIN[family][0])
    else:
        pruner.save_compact(tmp_path / "compact", compact=compact)
        reloaded = lp.load_compact(tmp_path / "compact")
    assert count_parameters(reloaded) == exact
    assert torch.allclose(_outputs(pruner, reloaded), expected, atol=1e-6, rtol=1e-5)
