"""save_compact -> from_pretrained (uniform, without lightning_prune) / load_compact and trust_remote_code
(per-layer) give the same logits as the exported model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, with_lora

import lightning_prune as lp

IDS = [[3, 17, 99, 5, 42, 8, 77, 1, 0, 63]]

# Runs in a fresh interpreter that never imports lightning_prune; prints the logits as JSON.
LOAD_WITHOUT_LP = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=sys.argv[2] == "1").eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(json.loads(sys.argv[3]))).logits
assert "lightning_prune" not in sys.modules, "lightning_prune was imported"
print(json.dumps({"cls": type(model).__name__, "logits": logits.tolist()}))
"""


def _load_elsewhere(path, trust_remote_code: bool):
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PATH": "/usr/bin:/bin",
        "HF_MODULES_CACHE": str(path.parent / "hf_modules"),
    }
    out = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_LP, str(path), "1" if trust_remote_code else "0", json.dumps(IDS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(path.parent),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["cls"], torch.tensor(result["logits"])


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


def test_uniform_export_loads_with_plain_from_pretrained(tmp_path):
    model = with_lora(tiny_causal_lm("llama"))
    config = lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn"), keep_units={"heads": 2, "ffn": 40})
    pruner = lp.attach(model, config)
    randomize_gates(pruner)
    compact = pruner.export()
    assert pruner.last_report.uniform
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    saved = json.loads((path / "config.json").read_text())
    assert saved["model_type"] == "llama" and "auto_map" not in saved
    assert saved["num_attention_heads"] == 4 and saved["num_key_value_heads"] == 2 and saved["intermediate_size"] == 40
    cls, logits = _load_elsewhere(path, trust_remote_code=False)
    assert cls == "LlamaForCausalLM"
    assert torch.allclose(logits, _logits(compact), atol=1e-5)
    assert torch.allclose(_logits(lp.load_compact(path)), _logits(compact), atol=1e-6)


@pytest.mark.parametrize("structures", [("hidden",), ("heads", "ffn", "hidden")], ids=["hidden", "heads+ffn+hidden"])
def test_uniform_export_with_a_pruned_hidden_size_is_a_standard_checkpoint(tmp_path, structures):
    """transformers rejects a hidden size that is not a multiple of the heads: ``uniform=True`` rounds the kept
    hidden dims to the nearest multiple of the kept heads, so the result still loads with plain from_pretrained."""
    model = with_lora(tiny_causal_lm("llama"))
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=structures, uniform=True))
    randomize_gates(pruner, seed=1)  # 41 hidden dims would be kept unrounded: not a multiple of 8 heads
    compact = pruner.export()
    assert pruner.last_report.uniform
    heads = compact.config.num_attention_heads
    assert compact.config.hidden_size % heads == 0 and compact.config.hidden_size < 64
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    cls, logits = _load_elsewhere(path, trust_remote_code=False)
    assert cls == "LlamaForCausalLM"
    assert torch.allclose(logits, _logits(compact), atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_per_layer_export_loads_with_trust_remote_code_and_load_compact(tmp_path, family):
    model = tiny_causal_lm(family)
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden", "mlp_block")))
    randomize_gates(pruner, seed=4)
    compact = pruner.export()
    assert not pruner.last_report.uniform
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    assert (path / "modeling_lightning_prune.py").exists()
    report = lp.ExportReport.from_json(path / "lightning_prune_report.json")
    assert report.params_after == sum(p.numel() for p in compact.parameters())
    cls, logits = _load_elsewhere(path, trust_remote_code=True)
    assert cls.startswith("Pruned")
    assert torch.allclose(logits, _logits(compact), atol=1e-5)
    reloaded = lp.load_compact(path)
    assert torch.allclose(_logits(reloaded), _logits(compact), atol=1e-6)
    # and it still matches the gated model
    assert torch.allclose(_logits(reloaded), _logits(pruner.hf_model), atol=1e-4)


def test_per_layer_export_generates_with_kv_cache(tmp_path):
    model = tiny_causal_lm("llama")
    pruner = lp.attach(
        model, lp.L0Config(target_sparsity=0.0, structures=("heads", "attn_block"), keep_units={"attn_block": 1})
    )
    randomize_gates(pruner, seed=2)
    compact = pruner.export()
    assert any(s["num_attention_heads"] == 0 for s in pruner.last_report.layer_shapes)
    prompt = torch.tensor([[5, 9, 13]])
    with torch.no_grad():
        cached = compact.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = compact.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_overwrite_replaces_directory_atomically(tmp_path, llama):
    pruner = lp.attach(llama, lp.L0Config(target_sparsity=0.0, structures=("ffn",)))
    randomize_gates(pruner)
    path = tmp_path / "compact"
    pruner.save_compact(path)
    pruner.save_compact(path, overwrite=True)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert (path / "model.safetensors").exists()


def test_export_report_travels_with_the_model_through_save_and_load(tmp_path):
    """``lp.export_report(model)``: the export's report from the model itself, after ``export`` and after
    ``load_compact``; a model that did not come from an export has none."""
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn")))
    randomize_gates(pruner, seed=2)
    compact = pruner.export()
    report = lp.export_report(compact)
    assert report is pruner.last_report
    assert report.params_after == sum(p.numel() for p in compact.parameters()) < report.params_before
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4 * report.reference_scale
    reloaded = lp.load_compact(pruner.save_compact(tmp_path / "compact", compact=compact))
    assert dataclasses.asdict(lp.export_report(reloaded)) == dataclasses.asdict(report)
    assert lp.export_report(tiny_causal_lm("llama")) is None
