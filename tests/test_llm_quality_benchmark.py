"""Smoke test of ``benchmarks/llm_quality.py``'s core on a tiny random Llama, and of its offline corpus.

The real run (SmolLM2-135M, tens of LoRA steps per row) lives in the benchmark; here a 4-layer Llama from a config
trains a few steps per row, enough to check the plumbing of every row kind: the same batches for every row, our
export and each baseline's one-shot removal at the asked-for share of prunable parameters, perplexities, side-by-side
speed, samples and the report files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import llm_baselines  # noqa: E402
import llm_data  # noqa: E402
import llm_quality  # noqa: E402
from _common import llama  # noqa: E402

VOCAB, SEQ = 256, 16


def _tiny():
    return llama(hidden=64, layers=4, heads=4, kv_heads=2, ffn=96, vocab=VOCAB, seed=0)


def _data(cfg):
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(3, VOCAB, (cfg.steps * cfg.batch_size, SEQ), generator=gen)
    return llm_quality.Data(
        train=llm_data.training_batches(windows, cfg.batch_size, cfg.steps, seed=0),
        calib=list(torch.randint(3, VOCAB, (2 * cfg.batch_size, SEQ), generator=gen).split(cfg.batch_size)),
        domain=torch.randint(3, VOCAB, (8, SEQ), generator=gen),
        general=torch.randint(3, VOCAB, (8, SEQ), generator=gen),
        prompt_ids=torch.randint(3, VOCAB, (1, 5), generator=gen),
        eos_id=0,
        compresso_prompt=[1, 7, 9],
    )


def _cfg(**kw):
    base = dict(
        steps=8,
        batch_size=2,
        seq_len=SEQ,
        sparsities=(0.5,),
        methods=("l0",),
        calib_batches=2,
        skip_first=1,
        skip_last=0,
        prefill_batch=2,
        decode_tokens=4,
        latency_repeats=1,
        sample_tokens=4,
    )
    base.update(kw)
    return llm_quality.LLMBenchConfig(**base)


@pytest.fixture(scope="module")
def rows():
    torch.set_num_threads(1)
    cfg = _cfg()
    return llm_quality.run(_tiny, _data(cfg), cfg, log=lambda *_: None)


def test_every_row_is_trained_measured_and_at_budget(rows):
    assert [(r.kind, r.name) for r in rows] == [
        ("dense", "dense LoRA"),
        ("ours", "l0"),
        ("baseline", "llm-pruner"),
        ("baseline", "flap"),
        ("baseline", "wanda-sp"),
    ]
    dense = rows[0]
    for row in rows:
        assert not row.error, row.error
        assert row.domain_ppl > 1 and row.general_ppl > 1
        assert row.prefill_ms > 0 and row.decode_tps > 0 and row.step_s > 0
        assert isinstance(row.sample, str) and row.sample
    assert dense.removed == pytest.approx(0.0)
    shape = llm_baselines.Shape.of(_tiny().config)
    unit = shape.group_params / shape.prunable  # the coarsest unit (one KV group)
    for row in rows[1:]:
        assert row.params < dense.params
        assert row.removed == pytest.approx(0.5, abs=unit), row.name


def test_baselines_remove_the_planned_units():
    torch.set_num_threads(1)
    model = _tiny()
    cfg = _cfg()
    data = _data(cfg)
    shape = llm_baselines.Shape.of(model.config)
    plan = llm_baselines.uniform_plan(shape, 0.5, skip_first=1, skip_last=0)
    assert plan[0] == (0, 0)  # LLM-Pruner keeps the first layers whole
    removed = sum(g * shape.group_params + c * shape.channel_params for g, c in plan)
    assert abs(removed - 0.5 * shape.prunable) <= shape.channel_params  # met to one FFN channel
    pruned = llm_quality.prune_baseline(model, "llm-pruner", 0.5, data, cfg)
    attention = pruned.model.layers[1].self_attn
    groups, channels = plan[1]
    assert attention.k_proj.out_features == (shape.kv_heads - groups) * shape.head_dim
    assert attention.q_proj.out_features == (shape.kv_heads - groups) * shape.ratio * shape.head_dim
    assert pruned.model.layers[1].mlp.down_proj.in_features == shape.ffn - channels
    out = pruned(input_ids=data.domain[:2]).logits
    assert torch.isfinite(out).all()


def test_flap_bias_compensation_keeps_the_mean_output():
    """Removing channels whose input is constant changes nothing once their mean contribution is a bias."""
    torch.set_num_threads(1)
    model = _tiny().eval()
    ids = torch.randint(3, VOCAB, (2, SEQ))
    stats = llm_baselines.activation_stats(model, [ids])
    layer = model.model.layers[0].mlp
    x = torch.randn(5, shape_in := layer.down_proj.in_features)
    keep = torch.arange(shape_in // 2)
    x[:, shape_in // 2 :] = stats[0]["d_mean"][shape_in // 2 :]  # the removed channels sit at their mean
    before = layer.down_proj(x)
    full = [(torch.arange(2), torch.arange(shape_in))] * 4
    full[0] = (torch.arange(2), keep)
    llm_baselines.slice_llama_(model, full, stats=stats)
    after = model.model.layers[0].mlp.down_proj(x[:, keep])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_report(rows, tmp_path):
    text = llm_quality.table(rows)
    assert text.count("\n") == len(rows) + 1
    llm_quality.plot(rows, tmp_path / "p.png", "tiny")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_corpus_split_is_deterministic_and_held_out():
    docs = llm_data.domain_documents()
    assert len(docs) > 100
    train, test = llm_data.split(docs)
    assert {d.name for d in train}.isdisjoint(d.name for d in test)
    assert 0.05 < len(test) / len(docs) < 0.25
    assert [d.name for d in llm_data.split(docs)[1]] == [d.name for d in test]
    general, source = llm_data.general_documents()
    assert general and sum(len(d.text) for d in general) > 20000, source
    text = llm_data.render_docstrings('"""Mod."""\ndef f(a, b=1):\n    """Add."""\n', "m")
    assert text == "Module m\n\nMod.\n\ndef f(a, b=1)\n    Add."


@pytest.mark.parametrize("name", sorted(set(llm_quality.METHODS) - {"l0"}))
def test_every_method_entry_trains_and_exports(name):
    """Each of our rows besides l0 (above) trains on the tiny model and exports without an error. The model ties
    its embeddings like SmolLM2, so PAT's row goes through the untying it needs."""
    torch.set_num_threads(1)

    def tied():
        model = _tiny()
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
        return model

    cfg = _cfg(methods=(name,), baselines=(), hidden_size=64)
    dense_prunable = llm_baselines.prunable_params(_tiny())
    row = llm_quality.run_row("ours", name, 0.5, tied, _data(cfg), cfg, dense_prunable)
    assert not row.error, row.error
    assert row.domain_ppl > 1 and row.sample
    assert 0.0 <= row.removed <= 0.5 + 0.05


def test_no_dense_run_leaves_a_placeholder_first_row(tmp_path):
    """``--no-dense`` (study runs whose dense row ran before): no dense training, the ratio columns read NaN, and
    the report and plot still come out."""
    torch.set_num_threads(1)
    cfg = _cfg(baselines=(), dense=False)
    assert [kind for kind, _, _ in llm_quality.jobs(cfg)] == ["ours"]
    rows = llm_quality.run(_tiny, _data(cfg), cfg, log=lambda *_: None)
    assert [r.kind for r in rows] == ["dense", "ours"] and "not run" in rows[0].error
    assert not rows[1].error and rows[1].domain_ppl > 1
    record = rows[1].record(rows[0])
    assert record["params_ratio"] != record["params_ratio"]  # NaN: there is no dense row to compare with
    assert "not run (--no-dense)" in llm_quality.table(rows)
    llm_quality.plot(rows, tmp_path / "p.png", "tiny")
    assert (tmp_path / "p.png").stat().st_size > 1000
