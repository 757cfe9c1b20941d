"""Issue #14, class 2: a saved export verifies itself.

``save_compact`` writes a manifest (sha256 of every file) and a stored probe (inputs and the outputs the compact
model computed); ``load_compact`` checks both by default. The table tampers with a saved directory in every way
that used to load silently (a truncated, removed or edited weights file, a tensor taken out, a config value
changed, a shard or the index edited, the manifest rewritten to match an edit) and expects
:class:`CorruptExportError` naming what changed. The report saved must describe the model saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import randomize_gates, tiny_causal_lm
from safetensors.torch import load_file, save_file

import lightning_prune as lp
from lightning_prune.export.integrity import MANIFEST_FILENAME, PROBE_FILENAME, write_manifest
from lightning_prune.export.report import REPORT_FILENAME, ExportReport, count_parameters

HINT = r"Re-export the model \(Pruner\.save_compact\), or pass verify=False to load_compact to load it anyway"
IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _export(uniform: bool, seed: int = 0) -> tuple[lp.Pruner, torch.nn.Module]:
    pruner = lp.attach(
        tiny_causal_lm("llama"), lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.1, uniform=uniform)
    )
    randomize_gates(pruner, seed=seed)
    return pruner, pruner.export()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    """One clean directory per layout (standard, per-layer, sharded) and the logits of the model saved there."""
    out = {}
    for layout in ("uniform", "layer", "sharded"):
        pruner, compact = _export(uniform=layout != "layer")
        path = tmp_path_factory.mktemp(layout) / "compact"
        pruner.save_compact(path, compact=compact, max_shard_size="20KB" if layout == "sharded" else "2GB")
        with torch.no_grad():
            out[layout] = (path, compact(input_ids=IDS).logits)
    return out


def _copy(saved, layout: str, tmp_path: Path) -> Path:
    target = tmp_path / layout
    shutil.copytree(saved[layout][0], target)
    return target


def _weights(path: Path) -> Path:
    return path / "model.safetensors" if (path / "model.safetensors").exists() else sorted(path.glob("model-*"))[0]


def _edit_tensor(path: Path) -> None:
    file = _weights(path)
    tensors = load_file(str(file))
    key = next(k for k in tensors if tensors[k].ndim == 2)
    tensors[key].mul_(1.5)  # same size, other bytes; every row, so that any input sees it
    save_file(tensors, str(file), metadata={"format": "pt"})


def _remove_tensor(path: Path) -> None:
    file = _weights(path)
    tensors = load_file(str(file))
    del tensors[next(k for k in tensors if k.endswith("input_layernorm.weight"))]
    save_file(tensors, str(file), metadata={"format": "pt"})


def _edit_config(path: Path, key: str = "rms_norm_eps", value=0.5) -> None:
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _truncate(path: Path) -> None:
    file = _weights(path)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_and_rewrite_manifest(path: Path) -> None:
    _edit_tensor(path)
    write_manifest(path)  # fingerprints now match the edit: only the stored probe can tell


TAMPERING = {
    # name: (layouts, tamper, message)
    "truncated weights": (
        ("uniform", "layer", "sharded"),
        _truncate,
        r"`model(-\d+-of-\d+)?\.safetensors` in '.*' has \d+ bytes, save_compact wrote \d+: it was truncated or "
        r"changed after the export\. " + HINT,
    ),
    "weights file removed": (
        ("uniform", "layer", "sharded"),
        lambda p: _weights(p).unlink(),
        r"'.*' lacks `model(-\d+-of-\d+)?\.safetensors`, which save_compact wrote: the export is incomplete\. " + HINT,
    ),
    "tensor removed": (
        ("uniform", "layer"),
        _remove_tensor,
        r"`model\.safetensors` in '.*' has \d+ bytes, save_compact wrote \d+: it was truncated or changed after the "
        r"export\. " + HINT,
    ),
    "tensor edited": (
        ("uniform", "layer", "sharded"),
        _edit_tensor,
        r"`model(-\d+-of-\d+)?\.safetensors` in '.*' was changed after the export \(sha256 [0-9a-f]{12}…, save_compact "
        r"wrote [0-9a-f]{12}…\)\. " + HINT,
    ),
    "config edited": (
        ("uniform", "layer", "sharded"),
        _edit_config,
        r"`config\.json` in '.*' (has \d+ bytes, save_compact wrote \d+: it was truncated or changed|was changed) "
        r"after the export",
    ),
    "config removed": (
        ("uniform",),
        lambda p: (p / "config.json").unlink(),
        r"'.*' lacks `config\.json`, which save_compact wrote: the export is incomplete\. " + HINT,
    ),
    "index edited": (
        ("sharded",),
        lambda p: (p / "model.safetensors.index.json").write_text(
            (p / "model.safetensors.index.json").read_text().replace("model-00001", "model-00002", 1)
        ),
        r"`model\.safetensors\.index\.json` in '.*' was changed after the export",
    ),
    "extra weights file": (
        ("uniform", "sharded"),
        lambda p: save_file({"extra": torch.zeros(2)}, str(p / "adapter_model.safetensors")),
        r"'.*' holds weights files save_compact did not write: \['adapter_model\.safetensors'\]\. " + HINT,
    ),
    "probe removed": (
        ("uniform",),
        lambda p: (p / PROBE_FILENAME).unlink(),
        rf"'.*' lacks `{PROBE_FILENAME}`, which save_compact wrote",
    ),
    "report edited": (
        ("layer",),
        lambda p: (p / REPORT_FILENAME).write_text(
            (p / REPORT_FILENAME).read_text().replace('"uniform"', '"uniform" ')
        ),
        rf"`{REPORT_FILENAME}` in '.*' (has \d+ bytes|was changed)",
    ),
    "manifest removed": (
        ("uniform", "layer"),
        lambda p: (p / MANIFEST_FILENAME).unlink(),
        rf"'.*' has no {MANIFEST_FILENAME}: it was not written by save_compact \(or was written by an older "
        r"lightning-prune, before exports recorded fingerprints\), so nothing says what it must compute\. " + HINT,
    ),
    "manifest rewritten after an edit": (
        ("uniform", "layer", "sharded"),
        _edit_and_rewrite_manifest,
        r"The model loaded from '.*' does not compute what the exported model computed on the stored probe: "
        r"max \|loaded - exported\| = .* > 0\.001 x .*\. The directory \(or the way it is loaded\) changed after the "
        r"export\. " + HINT,
    ),
}
ROWS = [(name, layout) for name, (layouts, _, _) in TAMPERING.items() for layout in layouts]


@pytest.mark.parametrize("name,layout", ROWS, ids=[f"{n.replace(' ', '_')}-{layout}" for n, layout in ROWS])
def test_a_tampered_directory_is_refused(saved, tmp_path, name, layout):
    path = _copy(saved, layout, tmp_path)
    _, tamper, message = TAMPERING[name]
    tamper(path)
    with pytest.raises(lp.CorruptExportError, match=message):
        lp.load_compact(path)
    assert issubclass(lp.CorruptExportError, lp.ExportMismatchError)


def test_an_edited_config_value_used_to_load_with_other_outputs(saved, tmp_path):
    """The issue's case: ``rms_norm_eps`` edited; ``verify=False`` shows what the check prevents."""
    path = _copy(saved, "uniform", tmp_path)
    _edit_config(path)
    with pytest.raises(lp.CorruptExportError, match=r"`config\.json`"):
        lp.load_compact(path)
    with torch.no_grad():
        logits = lp.load_compact(path, verify=False)(input_ids=IDS).logits
    assert (logits - saved["uniform"][1]).abs().max() > 0.1


@pytest.mark.parametrize("layout", ["uniform", "layer", "sharded"])
def test_a_clean_directory_loads_verified_and_with_plain_transformers(saved, tmp_path, layout):
    path, expected = saved[layout]
    names = {p.name for p in path.iterdir()}
    assert {MANIFEST_FILENAME, PROBE_FILENAME, REPORT_FILENAME, "config.json"} <= names
    if layout == "sharded":
        assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) > 1
    model = lp.load_compact(path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=layout == "layer")
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, expected)
        assert torch.equal(plain(input_ids=IDS).logits, expected)
    # the report is attached to the loaded model and describes it
    assert model.lightning_prune_report.params_after == count_parameters(model)


def test_loading_in_another_dtype_passes_the_probe_within_its_tolerance(saved):
    model = lp.load_compact(saved["uniform"][0], dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


# -- the report saved describes the model saved --------------------------------------------------------------------
def test_saving_an_older_export_writes_its_own_report(tmp_path):
    pruner = lp.attach(tiny_causal_lm("llama"), lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.1))
    randomize_gates(pruner, seed=0)
    older = pruner.export()
    randomize_gates(pruner, seed=5)
    newer = pruner.export()
    assert count_parameters(older) != count_parameters(newer)
    pruner.save_compact(tmp_path / "older", compact=older)
    report = ExportReport.from_json(tmp_path / "older" / REPORT_FILENAME)
    assert report.params_after == count_parameters(older) == count_parameters(lp.load_compact(tmp_path / "older"))
    assert report.kept_units == older.lightning_prune_report.kept_units


def test_a_report_of_another_model_is_refused(tmp_path):
    pruner, older = _export(uniform=False, seed=0)
    randomize_gates(pruner, seed=5)
    newer = pruner.export()
    assert count_parameters(older) != count_parameters(newer)
    with pytest.raises(
        lp.PruningConfigError,
        match=rf"The export report describes a model of {count_parameters(newer):,} parameters, but the model to save "
        rf"has {count_parameters(older):,}: it belongs to another export\. Pass the report of this model",
    ):
        lp.save_compact(older, tmp_path / "c", report=newer.lightning_prune_report)
    assert not (tmp_path / "c").exists()


def test_a_loaded_export_saved_again_keeps_its_report_and_verifies(saved, tmp_path):
    model = lp.load_compact(saved["layer"][0])
    again = lp.save_compact(model, tmp_path / "again")
    reloaded = lp.load_compact(again)
    assert reloaded.lightning_prune_report == model.lightning_prune_report
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=IDS).logits, saved["layer"][1])


def test_a_model_without_an_export_report_is_saved_without_one(tmp_path):
    pruner, _ = _export(uniform=True)
    plain = tiny_causal_lm("llama")
    pruner.save_compact(tmp_path / "plain", compact=plain)
    assert not (tmp_path / "plain" / REPORT_FILENAME).exists()
    lp.load_compact(tmp_path / "plain")  # still fingerprinted and probed
