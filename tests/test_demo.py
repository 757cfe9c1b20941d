"""The README's main job runs end to end (a few steps) on the real MiniLM-L6 weights, offline."""

from __future__ import annotations

import collections

import pytest
import torch

from lightning_prune.demo.data import _TEMPLATES, _TEST_TEMPLATES, LABELS, make_domain_dataset
from lightning_prune.demo.main import main


def test_domain_dataset_is_balanced_deterministic_and_splits_templates():
    train, test = make_domain_dataset(n_train=400, n_test=80, seed=3)
    assert collections.Counter(e.label for e in train) == {i: 100 for i in range(len(LABELS))}
    assert [e.text for e in train] == [e.text for e in make_domain_dataset(400, 80, seed=3)[0]]
    held_out = {_TEMPLATES[i].split("{")[0] for i in _TEST_TEMPLATES if not _TEMPLATES[i].startswith("{")}
    assert held_out and not any(e.text.startswith(tuple(h.capitalize() for h in held_out)) for e in train)


def test_main_job_smoke(tmp_path, capfd):
    threads = torch.get_num_threads()  # the suite runs with one thread (conftest), the machine has more cores
    results = main(["--steps", "8", "--n-train", "64", "--batch-size", "8", "--output", str(tmp_path)])
    # the user's thread setting is kept (forcing os.cpu_count() threads made a shared 2-core machine ~12x slower)
    assert results["threads"] == torch.get_num_threads() == threads
    out, err = capfd.readouterr()
    assert f"{threads} CPU thread(s)" in out
    # the console reads cleanly: no per-load report, no tips, no progress bar over a negative epoch count
    for noise in ("LOAD REPORT", "Tip:", "Epoch 1/-2", "LeafSpec", "Loading weights"):
        assert noise not in out + err, noise
    assert results["compact_params"] < results["dense_params"]
    assert 0.0 <= results["compact_accuracy"] <= 1.0
    # the compact model computes what the gated model computed: same accuracy on the test set
    assert results["compact_accuracy"] == results["gated_accuracy"]
    assert (tmp_path / "compact" / "lightning_prune_report.json").exists()
    assert (tmp_path / "compact" / "kept_units.png").exists()


def test_threads_flag_is_validated():
    with pytest.raises(SystemExit):
        main(["--threads", "0"])
