"""Property tests (hypothesis): over random small Llama-family, GPT-2 and BERT configs, random structure sets and
random masks, export equivalence and exact parameter counts always hold, and eval masks are deterministic.

Each example builds a fresh tiny model, attaches gates, spreads the gate scores at random (so the deterministic
masks prune an arbitrary subset, different counts per layer) and exports. ``Pruner.export`` already refuses a
compact model that differs from the gated one; here the outputs are compared again on other inputs, and the
compact model's parameter count must equal the cost model's exact count.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import randomize_gates, with_lora
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lightning_prune as lp

ALL = ("heads", "ffn", "hidden", "attn_block", "mlp_block")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

structure_sets = st.lists(st.sampled_from(ALL), min_size=1, max_size=5, unique=True).map(tuple)


@st.composite
def llama_configs(draw):
    family = draw(st.sampled_from(["llama", "mistral", "qwen2", "qwen3"]))
    kv = draw(st.integers(1, 3))
    rep = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([4, 8]))
    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[family]
    config = cls(
        hidden_size=kv * rep * draw(st.sampled_from([2, 4, 6])),  # transformers: hidden % heads == 0
        intermediate_size=draw(st.integers(4, 40)),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=kv * rep,
        num_key_value_heads=kv,
        head_dim=head_dim,
        vocab_size=64,
        max_position_embeddings=32,
        tie_word_embeddings=draw(st.booleans()) if family != "qwen3" else False,
    )
    return family, config


@st.composite
def gpt2_configs(draw):
    heads = draw(st.integers(1, 4))
    return transformers.GPT2Config(
        n_embd=heads * draw(st.sampled_from([4, 8])),
        n_head=heads,
        n_layer=draw(st.integers(1, 3)),
        n_inner=draw(st.integers(4, 40)),
        vocab_size=64,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


@st.composite
def bert_configs(draw):
    heads = draw(st.integers(1, 4))
    return transformers.BertConfig(
        hidden_size=heads * draw(st.sampled_from([4, 8])),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 3)),
        intermediate_size=draw(st.integers(4, 40)),
        vocab_size=64,
        max_position_embeddings=32,
        type_vocab_size=2,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _check(model, structures, seed, inputs, lora_targets=None):
    model = model.float().eval()
    if lora_targets is not None:
        model = with_lora(model, seed=seed, targets=lora_targets)
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=structures))
    randomize_gates(pruner, seed=seed)
    masks = pruner.deterministic_masks()
    # eval masks depend on the gate parameters only: asking again (after a forward pass) gives the same masks
    with torch.no_grad():
        gated_out = pruner.hf_model(**inputs)
    again = pruner.deterministic_masks()
    assert all(torch.equal(masks[k], again[k]) for k in masks)

    compact = pruner.export()
    assert sum(p.numel() for p in compact.parameters()) == int(pruner.cost.total(masks)[0])
    assert pruner.last_report.params_after == int(pruner.cost.total(masks)[0])
    with torch.no_grad():
        a = gated_out.logits if hasattr(gated_out, "logits") else gated_out[0]
        out = compact(**inputs)
        b = out.logits if hasattr(out, "logits") else out[0]
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max().clamp_min(1e-6))
    return pruner


@SETTINGS
@given(llama_configs(), structure_sets, st.integers(0, 10_000), st.booleans())
def test_llama_family_export_is_exact(family_config, structures, seed, lora):
    family, config = family_config
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))
    targets = ("q_proj", "v_proj", "down_proj") if lora else None
    _check(model, structures, seed, {"input_ids": ids}, lora_targets=targets)


@SETTINGS
@given(gpt2_configs(), structure_sets, st.integers(0, 10_000), st.booleans())
def test_gpt2_export_is_exact(config, structures, seed, lora):
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))
    _check(model, structures, seed, {"input_ids": ids}, lora_targets=("c_attn", "c_proj", "c_fc") if lora else None)


@SETTINGS
@given(bert_configs(), structure_sets, st.integers(0, 10_000), st.booleans())
def test_bert_export_is_exact(config, structures, seed, lora):
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 9), generator=gen)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": attention}
    _check(model, structures, seed, inputs, lora_targets=("query", "value", "dense") if lora else None)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_seed_gives_same_masks_after_training(seed):
    """Determinism: two runs with the same seed end with identical masks."""

    def run(run_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.LlamaConfig(
                hidden_size=32,
                intermediate_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                vocab_size=64,
                max_position_embeddings=32,
            )
        )
        pruner = lp.attach(model, lp.L0Config(target_sparsity=0.4, structures=("heads", "ffn"), gate_lr=0.2))
        opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
        pruner.hook_optimizer(opt)
        torch.manual_seed(run_seed)
        model.train()
        for _ in range(15):
            ids = torch.randint(0, 64, (4, 12))
            loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return {k: v.clone() for k, v in pruner.deterministic_masks().items()}

    first, second = run(seed), run(seed)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
