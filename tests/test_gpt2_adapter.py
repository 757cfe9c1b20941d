"""GPT-2 (fused c_attn, Conv1D projections, tied LM head): the shared check table (structures x LoRA).

Every case is exported once (module fixture); the saved directories are then loaded in ONE fresh
interpreter that never imports lightning_prune (plain ``from_pretrained`` for standard exports,
``trust_remote_code=True`` for per-layer ones), so the table stays fast on two cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import transformers
from conftest import randomize_gates, run_without_lightning_prune, with_lora
from torch import nn

import lightning_prune as lp
from lightning_prune.adapters.gpt2 import GPT2Adapter
from lightning_prune.errors import UnsupportedModelError
from lightning_prune.export.merge import merged_state_dict

LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
ALL = ("heads", "ffn", "hidden", "attn_block", "mlp_block")


@dataclass(frozen=True)
class Case:
    """One row of the table: a tiny model, the structures gated, and fixed counts (``keep_units``)."""

    cls: str = "GPT2LMHeadModel"
    structures: tuple[str, ...] = ALL
    keep: tuple[tuple[str, int], ...] = ()
    expect_uniform: bool = False
    config: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:
        keep = "".join(f",{k}={v}" for k, v in self.keep)
        extra = "".join(f",{k}={v}" for k, v in self.config)
        return f"{self.cls}:{'+'.join(self.structures)}{keep}{extra}"


def _blocks(structures):  # 2 layers: drop one block of each kind gated
    return tuple((s, 1) for s in structures if s.endswith("_block"))


SINGLE = [("heads",), ("ffn",), ("hidden",), ("attn_block",), ("mlp_block",), ALL]
CASES = [Case(structures=s, keep=_blocks(s)) for s in SINGLE] + [
    # uniform FFN pruning is a standard GPT2LMHeadModel (n_inner=40)
    Case(structures=("ffn",), keep=(("ffn", 40),), expect_uniform=True),
    # heads 4 -> 2 and hidden 64 -> 32 keeps head size 16: a standard GPT2Model
    Case(cls="GPT2Model", structures=("heads", "hidden"), keep=(("heads", 2), ("hidden", 32)), expect_uniform=True),
    # every head gone but the attention blocks kept: each layer adds only c_proj's bias; untied LM head
    Case(structures=("heads", "ffn"), keep=(("heads", 0),), config=(("tie_word_embeddings", False),)),
    Case(cls="GPT2Model", structures=ALL, keep=_blocks(ALL)),
    Case(cls="GPT2ForSequenceClassification", structures=ALL, keep=_blocks(ALL)),
]
TABLE = [(case, lora) for case in CASES for lora in (False, True)]
TABLE_IDS = [f"{c.id}-{'lora' if lora else 'plain'}" for c, lora in TABLE]

IDS = torch.tensor([[2, 17, 99, 5, 42, 8, 77, 1, 3, 63, 11], [7, 3, 120, 64, 9, 1, 33, 18, 90, 2, 4]])
ATTN = torch.tensor([[1] * 11, [1] * 8 + [0] * 3])

# Runs in a fresh interpreter that never imports lightning_prune; prints each model's output as JSON.
LOAD_WITHOUT_LP = """
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
jobs, ids, attn = json.loads(sys.argv[1]), *(torch.tensor(json.loads(a)) for a in sys.argv[2:4])
results = {}
for path, remote in jobs:
    arch = json.load(open(path + "/config.json"))["architectures"][0]
    auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModel
    auto = AutoModelForCausalLM if arch.endswith("LMHeadModel") else auto
    model = auto.from_pretrained(path, trust_remote_code=remote).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn)
    out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    results[path] = {"cls": type(model).__name__, "out": out.tolist()}
assert "lightning_prune" not in sys.modules, "lightning_prune was imported"
print(json.dumps(results))
"""


def tiny_gpt2(cls: str = "GPT2LMHeadModel", seed: int = 0, **overrides) -> nn.Module:
    """A 2-layer, 64-dim GPT-2 with 4 heads of 16 dims, 96 MLP channels and 3 labels."""
    values = dict(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=96,
        vocab_size=128,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        num_labels=3,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    return getattr(transformers, cls)(transformers.GPT2Config(**values)).float().eval()


def _run(model: nn.Module) -> torch.Tensor:
    """Logits, or the last hidden state of a bare GPT2Model."""
    model.eval()
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=ATTN)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _gated(pruner) -> torch.Tensor:
    out = _run(pruner.hf_model)
    bare = type(pruner.hf_model).__name__ == "GPT2Model"
    return out[..., pruner.adapter.kept_hidden] if bare else out  # a bare model's pruned dims are 0 (and absent)


def _dense(pruner) -> torch.Tensor:
    pruner.set_phase("dense")
    try:
        return _gated(pruner)
    finally:
        pruner.set_phase("prune")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every table case, save it, and load all of them in one interpreter without lightning_prune."""
    root = tmp_path_factory.mktemp("gpt2_exports")
    results = {}
    for i, (case, lora) in enumerate(TABLE):
        model = tiny_gpt2(case.cls, **dict(case.config))
        model = with_lora(model, targets=LORA_TARGETS) if lora else model
        config = lp.L0Config(target_sparsity=0.0, structures=case.structures, keep_units=dict(case.keep))
        pruner = lp.attach(model, config)
        randomize_gates(pruner, seed=len(case.structures) + i)
        compact = pruner.export()
        path = pruner.save_compact(root / f"case{i:02d}", compact=compact)
        results[TABLE_IDS[i]] = {"pruner": pruner, "compact": compact, "path": path}
    jobs = [[str(r["path"]), not r["pruner"].last_report.uniform] for r in results.values()]
    args = [json.dumps(jobs)] + [json.dumps(t.tolist()) for t in (IDS, ATTN)]
    loaded = run_without_lightning_prune(LOAD_WITHOUT_LP, args, root)
    for r in results.values():
        r["elsewhere"] = loaded[str(r["path"])]
    return results


@pytest.mark.parametrize(("case", "lora"), TABLE, ids=TABLE_IDS)
def test_gpt2_export_table(exported, case, lora):
    result = exported[TABLE_IDS[TABLE.index((case, lora))]]
    pruner, compact, path = result["pruner"], result["compact"], result["path"]
    report = pruner.last_report
    assert report.params_after < report.params_before, "the random gates should prune something"
    assert report.uniform == case.expect_uniform
    if case.expect_uniform:
        assert type(compact).__name__ == case.cls and compact.config.model_type == "gpt2"
    else:
        assert type(compact).__name__ == f"Pruned{case.cls}"
    # the compact model is plain: no peft wrappers, no gates, no hooks
    assert not any("lora" in n or "pruning_gates" in n for n, _ in compact.named_parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in compact.modules())
    # exact parameter count == the cost model's count under the final masks
    masks = pruner.deterministic_masks()
    assert sum(p.numel() for p in compact.parameters()) == int(pruner.cost.total(masks)[0]) == report.params_after

    # equivalence on inputs other than the export's own check (padding included)
    gated, small = _gated(pruner), _run(compact)
    assert _rel(gated, small) <= 1e-4
    # ... and the masks matter: the dense model computes something else
    assert _rel(_dense(pruner), small) > 1e-3

    # save_compact -> load_compact
    assert torch.allclose(_run(lp.load_compact(path)), small, atol=1e-6)
    # ... and loading without lightning_prune (plain from_pretrained / trust_remote_code)
    elsewhere = result["elsewhere"]
    assert elsewhere["cls"] == type(compact).__name__
    assert torch.allclose(torch.tensor(elsewhere["out"]), small, atol=1e-5)
    saved = json.loads((path / "config.json").read_text())
    if case.expect_uniform:
        assert "auto_map" not in saved and not (path / "modeling_lightning_prune.py").exists()
    else:
        assert saved["model_type"] == "lightning_prune_gpt2" and "auto_map" in saved


def _result(case_index: int, lora: bool):
    return TABLE_IDS[TABLE.index((CASES[case_index], lora))]


def test_per_layer_shapes_follow_the_masks(exported):
    result = exported[_result(5, False)]  # GPT2LMHeadModel, all structures, plain
    pruner, compact = result["pruner"], result["compact"]
    masks, shapes = pruner.deterministic_masks(), pruner.last_report.layer_shapes
    assert compact.config.n_embd == int(masks["hidden"].sum()) == compact.lm_head.in_features
    assert compact.lm_head.weight is compact.transformer.wte.weight, "the LM head stays tied"
    for l, shape in enumerate(shapes):
        attn_kept, mlp_kept = bool(masks["attn_block"][0, l]), bool(masks["mlp_block"][0, l])
        assert shape["num_attention_heads"] == (int(masks["heads"][l].sum()) if attn_kept else 0)
        assert shape["intermediate_size"] == (int(masks["ffn"][l].sum()) if mlp_kept else 0)
        assert shape["attention_output_bias"] == attn_kept and shape["ffn_output_bias"] == mlp_kept


def test_uniform_exports_are_standard_configs(exported):
    compact = exported[_result(6, True)]["compact"]
    assert compact.config.n_inner == 40 and compact.transformer.h[1].mlp.c_fc.nf == 40
    encoder = exported[_result(7, False)]["compact"]
    assert (encoder.config.n_embd, encoder.config.n_head) == (32, 2) and encoder.h[0].attn.head_dim == 16


def test_headless_layers_keep_the_cache_length(exported):
    """A layer with no heads writes only its bias but still extends the KV cache (generation positions)."""
    compact = exported[_result(8, True)]["compact"]
    assert all(s["num_attention_heads"] == 0 for s in exported[_result(8, True)]["pruner"].last_report.layer_shapes)
    ids = IDS[:1]
    with torch.no_grad():
        full = compact(input_ids=ids).logits[:, -1]
        cache = compact(input_ids=ids[:, :-1], use_cache=True).past_key_values
        assert cache.get_seq_length() == ids.shape[1] - 1
        step = compact(input_ids=ids[:, -1:], past_key_values=cache).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-5)


def test_lora_on_conv1d_merges_in_the_conv1d_layout():
    model = with_lora(tiny_gpt2(), targets=LORA_TARGETS)
    c_attn = model.base_model.model.transformer.h[0].attn.c_attn
    assert c_attn.fan_in_fan_out, "peft switches fan_in_fan_out on for Conv1D"
    assert c_attn.get_delta_weight("default").shape == c_attn.get_base_layer().weight.shape == (64, 192)
    merged = merged_state_dict(model)
    reference = model.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in reference)


def test_unsupported_gpt2_heads_are_rejected_with_a_hint():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        GPT2Adapter(transformers.GPT2DoubleHeadsModel(config))
