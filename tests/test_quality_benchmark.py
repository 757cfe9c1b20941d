"""Smoke test of ``benchmarks/quality.py``'s core on a tiny BERT: every row kind is produced and measured.

The real run (MiniLM-L6, hundreds of steps) lives in the benchmark; here a 2-layer BERT from a config trains
4 steps per row, which is enough to check the plumbing of each kind: our method's export really shrinks the
model, torch-pruning removes whole heads and FFN channels at the asked-for budget, and Lightning's
``ModelPruning`` zeroes weights without changing the parameter count.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality  # noqa: E402 - torch-pruning (a test dependency) and lightning must be installed
import quality_data  # noqa: E402


def _tiny_task(n_train: int = 64, n_test: int = 32, seq: int = 12, vocab: int = 100):
    gen = torch.Generator().manual_seed(0)

    def data(n):
        ids = torch.randint(5, vocab, (n, seq), generator=gen)
        labels = (ids[:, 1] % 2).long()  # learnable from the second token
        return torch.utils.data.TensorDataset(ids, torch.ones_like(ids), labels)

    return quality.Task("tiny", data(n_train), data(n_test), 2)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def rows():
    torch.set_num_threads(1)
    cfg = quality.BenchConfig(
        steps=4,
        batch_size=8,
        max_length=12,
        sparsities=(0.5,),
        prune_at=0.5,
        taylor_batches=1,
        latency_repeats=2,
        methods=("l0",),
    )
    return quality.run(_tiny_bert, _tiny_task(), cfg, log=lambda *_: None)


def test_every_row_kind_is_present(rows):
    assert [r.kind for r in rows] == ["dense", "ours", "two-stage", "unstructured"]
    for row in rows:
        assert 0.0 <= row.accuracy <= 1.0
        assert row.latency_ms > 0


def test_structured_rows_are_smaller(rows):
    dense, ours, two_stage, _ = rows
    for row in (ours, two_stage):
        assert row.params < dense.params
        assert row.encoder_sparsity == pytest.approx(0.5, abs=0.1)  # the asked-for budget, to a unit's granularity
    # torch-pruning removed whole heads (2 of 4) and kept the hidden size
    attention = two_stage.model.bert.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.query.out_features, attention.query.in_features) == (2, 16, 32)


@pytest.mark.parametrize("name", sorted(set(quality.METHODS) - {"l0"}))
def test_every_method_entry_trains_and_exports_at_the_budget(name):
    """Each of our rows (besides l0, above) trains through the callback and exports a smaller model; rows whose
    masks are matched to the target (all but STE, whose export mask is its training mask) export at the budget."""
    torch.set_num_threads(1)
    cfg = quality.BenchConfig(steps=6, batch_size=8, max_length=12, sparsities=(0.5,), prune_at=0.5)
    entry = quality.METHODS[name]
    torch.manual_seed(0)
    dense = _tiny_bert()
    config = entry.config(0.5, cfg)
    compact = entry.train(_tiny_bert(), config, _tiny_task(), cfg)
    dense_linear, _ = quality._linear_stats(dense)
    compact_linear, _ = quality._linear_stats(compact)
    if config.match_target:
        assert 1 - compact_linear / dense_linear == pytest.approx(0.5, abs=0.1)
    else:
        assert compact_linear <= dense_linear
    ids = torch.randint(5, 100, (2, 12))
    assert compact(input_ids=ids).logits.shape == (2, 2)


def test_model_pruning_keeps_parameter_count(rows):
    dense, *_, unstructured = rows
    assert unstructured.params == dense.params
    assert unstructured.encoder_sparsity == 0.0
    assert unstructured.zero_fraction == pytest.approx(0.5, abs=0.01)
    assert not any("weight_orig" in n for n, _ in unstructured.model.named_parameters())  # made permanent


def test_report(rows, tmp_path):
    text = quality.table(rows)
    assert text.count("\n") == len(rows) + 1
    line = quality.headline(rows)
    assert line.startswith("headline") and "l0 @50%" in line and "ModelPruning" in line
    quality.plot(rows, tmp_path / "q.png", "tiny")
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_docstring_task_is_balanced_held_out_and_has_no_giveaways():
    train, test = quality_data.make_docstring_dataset(n_train_per_class=30, n_test_per_class=10)
    labels = range(len(quality_data.LABELS))
    assert [sum(e.label == i for e in train) for i in labels] == [30] * len(quality_data.LABELS)
    assert [sum(e.label == i for e in test) for i in labels] == [10] * len(quality_data.LABELS)
    assert not {e.text for e in train} & {e.text for e in test}  # no sentence in both splits
    assert not any(quality_data._GIVEAWAY.search(e.text) for e in train + test)  # no library named
    assert quality_data._first_sentence("Uses numpy to sum. More.") is None
    assert quality_data._first_sentence("Return the sum of the array.\n\nMore text.") == "Return the sum of the array."


def test_sixteen_library_task_adds_classes_without_changing_the_eight():
    eight = quality_data.make_docstring_dataset(n_train_per_class=30, n_test_per_class=10)
    train, test = quality_data.make_docstring_dataset(30, 10, task="docstring-library-16")
    assert [sum(e.label == i for e in train) for i in range(16)] == [30] * 16
    assert [sum(e.label == i for e in test) for i in range(16)] == [10] * 16
    assert not {e.text for e in train} & {e.text for e in test}
    for pattern in (quality_data._GIVEAWAY, quality_data._GIVEAWAY_16):  # no library of either list is named
        assert not any(pattern.search(e.text) for e in train + test)
    # the default task is the 8-library one, and it has no extra filter (its data are as before the 16-class task)
    assert eight == quality_data.make_docstring_dataset(30, 10, task="docstring-library")
    assert quality_data.TASKS["docstring-library"].extra_giveaway is None
    assert quality_data._first_sentence("Log the metric to wandb for the run.", quality_data._GIVEAWAY_16) is None
    with pytest.raises(ValueError, match="Unknown task 'docstrings'; known: docstring-library"):
        quality_data.make_docstring_dataset(30, 10, task="docstrings")


def test_seeds_table_reports_mean_spread_and_gap_to_two_stage():
    def row(kind, name, target, acc):
        return quality.Row(kind, name, target, acc, 1, 0.0, 0.0, 0.0)

    per_seed = {
        s: [row("dense", "dense", 0.0, 0.5), row("ours", "l0", 0.5, 0.45 + s / 50), row("two-stage", "tp", 0.5, 0.47)]
        for s in (0, 1, 2)
    }
    lines = quality.seeds_table(per_seed).splitlines()
    assert len(lines) == 5
    assert "| l0 (ours) | 50% | 0.470 ± 0.020 | 0.450, 0.470, 0.490 | +0.000 |" in lines


class _RecordBatches:
    def __new__(cls, seen: list):
        from lightning.pytorch.callbacks import Callback

        class Record(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                seen.append(batch[0].clone())

        return Record()


def test_two_stage_second_stage_continues_the_single_run_batch_order():
    """The two-stage baseline's fine-tuning sees the batches a one-run row sees after the cut (issue #18: "same
    batches"), not a new shuffle: fit(first epoch) + fit_after_cut == fit(all)."""
    torch.set_num_threads(1)
    task = _tiny_task()
    cfg = quality.BenchConfig(steps=6, batch_size=8, prune_at=1 / 3)  # epochs of 2 batches
    single, split = [], []
    quality.fit(_tiny_bert(), task, cfg, 6, [_RecordBatches(single)])
    model = _tiny_bert()
    quality.fit(model, task, cfg, 2, [_RecordBatches(split)])
    quality.fit_after_cut(model, task, cfg, [_RecordBatches(split)])
    assert len(single) == len(split) == 6
    for a, b in zip(single, split):
        assert torch.equal(a, b)
    restarted = []  # the old second stage (a new shuffle) differs: the check can fail
    quality.fit(_tiny_bert(), task, dataclasses.replace(cfg, seed=cfg.seed + 1), 4, [_RecordBatches(restarted)])
    assert not all(torch.equal(a, b) for a, b in zip(single[2:], restarted))


def test_no_methods_runs_the_baselines_only():
    """``--methods`` with no names (``BenchConfig.methods=()``): baseline rows only; ``None`` means the defaults."""
    torch.set_num_threads(1)
    cfg = quality.BenchConfig(
        steps=2, batch_size=8, sparsities=(0.5,), prune_at=0.5, taylor_batches=1, latency_repeats=1, methods=()
    )
    cfg.baselines = ("two-stage",)
    rows = quality.run(_tiny_bert, _tiny_task(), cfg, log=lambda *_: None)
    assert [r.kind for r in rows] == ["dense", "two-stage"]
    assert quality.BenchConfig().methods is None
