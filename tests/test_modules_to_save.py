"""peft ``modules_to_save`` (a trained copy of a whole module, e.g. the LM head): attach accepts it and the export
writes the trained copy, not the original."""

from __future__ import annotations

import torch
from conftest import randomize_gates, tiny_causal_lm

import lightning_prune as lp


def test_the_trained_copy_of_a_modules_to_save_head_is_exported():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm("llama"), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    with torch.no_grad():  # "training" of the copy: it must differ from the original for the test to mean anything
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.3))
    randomize_gates(pruner, seed=1)
    compact = pruner.export()
    trained = model.base_model.model.lm_head.modules_to_save["default"].weight
    assert torch.equal(compact.lm_head.weight, trained)  # heads/ffn pruning keeps the hidden size
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(compact(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
