"""Generation with the KV cache is part of the export check (issues #12, #17).

A forward pass over a whole sequence cannot see an attention layer that ignores its cache: the per-layer
head-dim exports did exactly that under transformers 5.2x (the cache arrived as ``cache=``, the layer read
``past_key_values``) while the plain equivalence check passed. So every causal-LM export now also decodes
greedily with the compact model's cache and compares each step's logits with the gated model's uncached logits.

The table: every causal family × structure set × (uniform, per-layer), then ``save_compact`` → ``load_compact``
(and plain ``from_pretrained`` where the shapes are standard) and the same check on the reloaded model.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import FAMILIES, randomize_gates, tiny_causal_lm, tiny_phi3
from test_gpt2_adapter import tiny_gpt2

import lightning_prune as lp
from lightning_prune.errors import ExportMismatchError
from lightning_prune.export.verify import ExportCheck

LLAMA_SETS = [("heads",), ("ffn",), ("hidden",), ("heads", "ffn", "hidden"), ("attn_block", "mlp_block")]
LLAMA_SETS += [("qk_dims", "v_dims")]
GPT2_SETS = PHI3_SETS = LLAMA_SETS[:-1]  # no head-dim structures

ROWS = [(f, s, u) for f in FAMILIES for s in LLAMA_SETS for u in (False, True)]
ROWS += [("gpt2", s, u) for s in GPT2_SETS for u in (False, True)]
ROWS += [("phi3", s, u) for s in PHI3_SETS for u in (False, True)]
IDS = [f"{f}-{'+'.join(s)}-{'uniform' if u else 'per_layer'}" for f, s, u in ROWS]


def _model(family: str) -> torch.nn.Module:
    return {"gpt2": tiny_gpt2, "phi3": tiny_phi3}.get(family, lambda: tiny_causal_lm(family))()


def _attach(family: str, structures: tuple[str, ...], uniform: bool, seed: int = 3) -> lp.Pruner:
    config = lp.L0Config(structures=structures, target_sparsity=0.3, uniform=uniform)
    pruner = lp.attach(_model(family), config)
    randomize_gates(pruner, seed=seed)
    return pruner


def _greedy(model: torch.nn.Module, prompt: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=5, min_new_tokens=5, pad_token_id=0)
    with torch.no_grad():
        return model.eval().generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=config, use_cache=use_cache
        )


@pytest.mark.parametrize("family,structures,uniform", ROWS, ids=IDS)
def test_cached_generation_matches_the_gated_model_after_export_and_reload(tmp_path, family, structures, uniform):
    pruner = _attach(family, structures, uniform)
    compact = pruner.export()
    report = pruner.last_report
    scale = report.reference_scale
    assert report.generation_max_abs_diff is not None
    assert report.generation_max_abs_diff <= pruner.config.export_rtol * 10 * scale  # logits of the same model

    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = [lp.load_compact(path)]
    standard = report.uniform and "auto_map" not in (path / "config.json").read_text()
    if standard:  # a standard config: plain from_pretrained, no lightning-prune, no remote code
        reloaded.append(transformers.AutoModelForCausalLM.from_pretrained(path))
    prompt = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(7))
    expected = _greedy(compact, prompt)
    assert torch.equal(expected, _greedy(compact, prompt, use_cache=False))
    for model in reloaded:
        assert ExportCheck(pruner.adapter, pruner.hf_model.eval(), model, rtol=1e-4).generation() is not None
        assert torch.equal(_greedy(model, prompt), expected)


def test_the_check_fails_on_an_attention_that_ignores_its_cache(monkeypatch):
    """The bug class itself: a per-layer export whose attention never reads the cache is refused, while the
    plain forward-pass check alone still passes."""
    pruner = _attach("llama", ("qk_dims", "v_dims"), uniform=False)
    compact = pruner.export()
    attention = compact.model.layers[0].self_attn
    module = __import__(type(attention).__module__, fromlist=["_layer_cache"])

    def forget_the_cache(kwargs):
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        return None

    monkeypatch.setattr(module, "_layer_cache", forget_the_cache)
    with pytest.raises(ExportMismatchError, match="generates 4 tokens with its KV cache"):
        ExportCheck(pruner.adapter, pruner.hf_model.eval(), compact).generation()


def test_encoders_skip_the_generation_check():
    from test_bert_adapter import tiny_encoder

    pruner = lp.attach(tiny_encoder(), lp.L0Config(structures=("heads",), target_sparsity=0.2))
    randomize_gates(pruner)
    pruner.export()
    assert pruner.last_report.generation_max_abs_diff is None


@pytest.mark.parametrize("positions", [4, 8])
def test_models_with_few_positions_export(positions):
    """The checks used 16 positions (plus the generated tokens) whatever the model; short-context configs crashed."""
    from test_bert_adapter import tiny_encoder

    gpt2 = lp.attach(tiny_gpt2(n_positions=positions), lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.2))
    config = tiny_encoder().config
    config.max_position_embeddings = positions
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()
    encoder = lp.attach(bert, lp.L0Config(structures=("heads",), target_sparsity=0.2))
    for pruner in (gpt2, encoder):
        randomize_gates(pruner)
        pruner.export()
        assert pruner.last_report.max_abs_diff <= 1e-4 * pruner.last_report.reference_scale
    assert gpt2.last_report.generation_max_abs_diff is not None
