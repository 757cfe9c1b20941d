"""Export equivalence and exact parameter counts: adapter family × structures × LoRA (shared check table)."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, PHI3_LORA_TARGETS, randomize_gates, tiny_causal_lm, tiny_phi3, with_lora

import lightning_prune as lp

STRUCTURE_SETS = [
    ("heads",),
    ("ffn",),
    ("hidden",),
    ("attn_block",),
    ("mlp_block",),
    ("heads", "ffn", "hidden", "attn_block", "mlp_block"),
]


def _max_rel_diff(gated, compact, vocab=128, seed=123):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=gen)
    gated.eval()
    compact.eval()
    with torch.no_grad():
        a = gated(input_ids=ids).logits
        b = compact(input_ids=ids).logits
    return float((a - b).abs().max() / a.abs().max())


def _unique_params(model):
    return sum(p.numel() for p in model.parameters())


#: GQA models (8 query heads share 4 KV heads) with separate (Llama) and fused (Phi-3) projections, and their LoRA
#: (+bias: q/k/v/o and gate/up/down with biases: a closed block gate removes its output bias with the block)
GQA = {
    "llama": (lambda: tiny_causal_lm("llama"), None),
    "llama+bias": (lambda: tiny_causal_lm("llama", attention_bias=True, mlp_bias=True), None),
    "phi3": (tiny_phi3, PHI3_LORA_TARGETS),
}


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("structures", STRUCTURE_SETS, ids=["+".join(s) for s in STRUCTURE_SETS])
@pytest.mark.parametrize("family", list(GQA))
def test_gqa_export_equivalence(family, structures, lora):
    build, targets = GQA[family]
    model = build()
    model = (with_lora(model) if targets is None else with_lora(model, targets=targets)) if lora else model
    one_block = {s: 1 for s in structures if s.endswith("_block")}  # 2 layers: drop one block of each kind
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=structures, keep_units=one_block))
    randomize_gates(pruner, seed=len(structures))
    compact = pruner.export()

    report = pruner.last_report
    assert report.params_after < report.params_before, "the random gates should prune something"
    # the compact model is plain: no peft wrappers, no gates, no hooks
    assert not any("lora" in n or "pruning_gates" in n for n, _ in compact.named_parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in compact.modules())
    # exact parameter count = the cost model's count under the final masks
    masks = pruner.deterministic_masks()
    assert _unique_params(compact) == int(pruner.cost.total(masks)[0]) == report.params_after
    # independent re-check of equivalence on other inputs (export already checked its own)
    assert _max_rel_diff(pruner.hf_model, compact) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_every_llama_family_exports_exactly(family):
    model = with_lora(tiny_causal_lm(family))
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden")))
    randomize_gates(pruner, seed=3)
    compact = pruner.export()
    assert _max_rel_diff(pruner.hf_model, compact) <= 1e-4
    assert _unique_params(compact) == pruner.last_report.params_after


def test_tied_embeddings_with_hidden_pruning():
    model = tiny_causal_lm("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("hidden", "ffn")))
    randomize_gates(pruner, seed=5)
    compact = pruner.export()
    assert compact.lm_head.weight is compact.model.embed_tokens.weight
    assert _unique_params(compact) == pruner.last_report.params_after
    assert _max_rel_diff(pruner.hf_model, compact) <= 1e-4


def test_gqa_export_is_a_valid_config_with_kept_groups():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads",), keep_units={"heads": 2}))
    randomize_gates(pruner, seed=7)
    compact = pruner.export()
    # 2 of 4 KV groups kept in every layer -> uniform standard config with 4 query heads / 2 KV heads
    assert type(compact).__name__ == "LlamaForCausalLM"
    assert compact.config.num_key_value_heads == 2
    assert compact.config.num_attention_heads == 4
    attn = compact.model.layers[0].self_attn
    assert attn.k_proj.out_features == 2 * 16 and attn.q_proj.out_features == 4 * 16
    # the kept groups are the two best-scored ones in each layer
    scores = pruner.gates["heads"].score()
    masks = pruner.deterministic_masks()["heads"]
    for layer in range(2):
        kept = set(masks[layer].nonzero().flatten().tolist())
        assert kept == set(torch.topk(scores[layer], 2).indices.tolist())


def test_export_does_not_modify_the_training_model():
    model = with_lora(tiny_causal_lm("llama"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden")))
    randomize_gates(pruner)
    pruner.export()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert model.training is False or model.training is True  # mode restored (no exception)


def test_uniform_option_gives_equal_counts_per_layer():
    model = tiny_causal_lm("mistral")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden"), uniform=True))
    randomize_gates(pruner, seed=11)
    compact = pruner.export()
    shapes = pruner.last_report.layer_shapes
    assert all(s == shapes[0] for s in shapes)
    assert pruner.last_report.uniform
    assert type(compact).__name__ == "MistralForCausalLM"


def test_closed_blocks_with_biases_save_and_load(tmp_path):
    """A block gate at 0 removes the whole block with its output bias (the cost model counts it so); the per-layer
    export is built without that bias and loads back computing the same function."""
    model = tiny_causal_lm("llama", attention_bias=True, mlp_bias=True)
    config = lp.L0Config(target_sparsity=0.0, structures=("attn_block", "mlp_block"), match_target=False)
    pruner = lp.attach(model, config)
    with torch.no_grad():  # layer 0 loses its attention, layer 1 its MLP
        pruner.gates["attn_block"].log_alpha.copy_(torch.tensor([[-10.0, 10.0]]))
        pruner.gates["mlp_block"].log_alpha.copy_(torch.tensor([[10.0, -10.0]]))
    compact = pruner.export()
    layers = compact.model.layers
    assert layers[0].self_attn.bias is None and layers[1].mlp.bias is None
    assert (
        _unique_params(compact)
        == pruner.last_report.params_after
        == int(pruner.cost.total(pruner.deterministic_masks())[0])
    )
    lp.save_compact(compact, tmp_path)
    loaded = lp.load_compact(tmp_path)
    assert _unique_params(loaded) == _unique_params(compact)
    assert _max_rel_diff(pruner.hf_model, loaded) <= 1e-4
