"""An export that fits in memory (issue #13): no second full copy of the weights, the caller's dtype kept, and
sharded safetensors that load back equal.

The memory check counts the bytes of every tensor torch's CPU allocator hands out during ``export()`` (the
profiler's allocation events, in order, so the running total's maximum is the peak of new tensor memory): it
must stay below the compact model plus a fraction of the gated model, where an export that merges every weight
first needs the compact model plus a whole copy.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, tiny_config, with_lora
from torch.profiler import ProfilerActivity, profile

import lightning_prune as lp
from lightning_prune.export.assemble import parameters_on_meta
from lightning_prune.export.merge import MergedWeights, merged_state_dict

# Many small layers, so that no single weight is a large part of the model (vocab 128 x hidden 64 = 1/70 of it).
DEEP = dict(num_hidden_layers=12, intermediate_size=192)


def _tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, shared storage counted once."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def peak_new_tensor_bytes(fn) -> tuple[int, object]:
    """The largest number of bytes held by tensors allocated during ``fn()`` at any moment, and its result."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if str(event.device_type()).endswith("CPU"):
            running += event.nbytes()
            peak = max(peak, running)
    return peak, out


def _gated(lora: bool, dtype: torch.dtype = torch.float32, structures=("heads", "ffn", "hidden")):
    model = tiny_causal_lm("llama", **DEEP)
    model = with_lora(model) if lora else model
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=structures))
    randomize_gates(pruner, seed=2)
    model.to(dtype)
    return model, pruner


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("structures", [("heads", "ffn"), ("heads", "ffn", "hidden")], ids=["uniform", "hidden"])
def test_export_holds_no_second_full_copy(lora, structures):
    model, pruner = _gated(lora, structures=structures)
    pruner.export()  # imports and first-call caches out of the way
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weights = _tensor_bytes(pruner.hf_model)
    peak, compact = peak_new_tensor_bytes(pruner.export)
    compact_bytes = _tensor_bytes(compact)
    assert compact_bytes < 0.8 * weights, "the gates should prune a good part of the model"
    # merging everything first costs a whole copy (1.0x) on top of the compact model; slicing per tensor a few
    # weights at a time (one merged tensor, its slice, and the check's activations)
    assert peak - compact_bytes < 0.25 * weights, (peak, compact_bytes, weights)
    live = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(p.untyped_storage().data_ptr() in live for p in compact.parameters()), "compact shares memory"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the export changed the gated model"


def test_pat_export_holds_no_second_full_copy():
    model = tiny_causal_lm("llama", **DEEP)
    pruner = lp.attach(model, lp.PATConfig(target_hidden_size=40, hsm_rank=4, total_steps=40))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pruner.gates["hidden"].logits.copy_(torch.randn(1, 64, generator=gen))
        for hsm in pruner.state.method_modules.values():
            hsm.up.copy_(torch.randn(hsm.up.shape, generator=gen) * 0.1)
    pruner.export()
    weights = _tensor_bytes(pruner.hf_model)
    peak, compact = peak_new_tensor_bytes(pruner.export)
    assert peak - _tensor_bytes(compact) < 0.25 * weights, (peak, _tensor_bytes(compact), weights)


def test_merged_weights_equal_merge_and_unload():
    model = with_lora(tiny_causal_lm("llama"))
    view = dict(MergedWeights(model))  # read before merge_and_unload changes the model
    eager = merged_state_dict(model)
    reference = model.merge_and_unload().state_dict()
    assert view.keys() == eager.keys() == reference.keys()
    assert all(torch.equal(view[k], eager[k]) and torch.allclose(view[k], reference[k], atol=1e-6) for k in reference)


def test_merged_weights_read_lora_weights_fresh_and_the_rest_live():
    model = with_lora(tiny_causal_lm("llama"))
    view = MergedWeights(model)
    hf = model.get_base_model()
    live = hf.model.layers[0].self_attn.q_proj.base_layer.weight
    merged = view["model.layers.0.self_attn.q_proj.weight"]
    assert merged.untyped_storage().data_ptr() != live.untyped_storage().data_ptr()
    norm = view["model.layers.0.input_layernorm.weight"]
    assert norm.untyped_storage().data_ptr() == hf.model.layers[0].input_layernorm.weight.untyped_storage().data_ptr()
    assert view.owned(norm).untyped_storage().data_ptr() != norm.untyped_storage().data_ptr()
    assert view.owned(merged) is merged
    view.transform("model.norm.weight", lambda t: t * 2)
    assert torch.equal(view["model.norm.weight"], hf.model.norm.weight * 2)
    assert torch.equal(hf.model.norm.weight, model.get_base_model().model.norm.weight)  # the live one untouched


def test_parameters_on_meta_keeps_buffers_real():
    from conftest import tiny_config
    from transformers import LlamaForCausalLM

    with parameters_on_meta():
        model = LlamaForCausalLM(tiny_config("llama"))
    assert all(p.is_meta for p in model.parameters())
    assert all(not b.is_meta for b in model.buffers())
    assert not torch.nn.Linear(2, 2).weight.is_meta, "the patch must end with the context"


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_bf16_model_exports_and_saves_bf16(lora, tmp_path):
    """Weights made in bf16 (as ``from_pretrained(dtype=torch.bfloat16)`` does) and fp32 rotary frequencies: the
    compact model has the same dtypes, checks at the bf16 tolerance, and reloads in bf16."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlamaForCausalLM(tiny_config("llama", **DEEP)).eval()
    finally:
        torch.set_default_dtype(previous)
    model = with_lora(model) if lora else model
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn")))
    randomize_gates(pruner, seed=4)
    gated = pruner.hf_model
    assert gated.model.rotary_emb.inv_freq.dtype == torch.float32
    compact = pruner.export()
    assert {p.dtype for p in compact.parameters()} == {torch.bfloat16}
    assert compact.model.rotary_emb.inv_freq.dtype == torch.float32  # as in the gated model, not rounded to bf16
    report = pruner.last_report
    assert report.max_abs_diff <= 2e-2 * report.reference_scale
    pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = lp.load_compact(tmp_path / "compact")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip(compact.state_dict().values(), reloaded.state_dict().values()))


@pytest.mark.parametrize("structures", [("heads", "ffn"), ("heads", "ffn", "hidden")], ids=["uniform", "per_layer"])
def test_sharded_save_loads_back_equal(structures, tmp_path):
    model, pruner = _gated(lora=True, structures=structures)
    compact = pruner.export()
    path = pruner.save_compact(tmp_path / "compact", compact=compact, max_shard_size="64KB")
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) >= 2, shards
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    reloaded = lp.load_compact(path).eval()
    expected, got = compact.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(compact(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_default_save_is_one_file_for_a_small_model(tmp_path):
    _, pruner = _gated(lora=False, structures=("ffn",))
    path = pruner.save_compact(tmp_path / "compact")
    assert [p.name for p in path.glob("*.safetensors")] == ["model.safetensors"]
