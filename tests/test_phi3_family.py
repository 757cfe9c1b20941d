"""The Phi-3 family (issue #15, item 5): Llama's layout with a fused ``qkv_proj`` and a fused ``gate_up_proj``.

The shared tables have phi3 rows: ``test_export_equivalence`` (structure sets × LoRA: equivalence, exact counts,
a plain compact model), ``test_adapter_matrix`` (structure × LoRA: equivalence, exact counts, save and
``load_compact``), ``test_generation_check`` (structure sets × uniform / per-layer: greedy generation with the KV
cache after ``load_compact`` and plain ``from_pretrained``), ``test_check_scope`` (every Phi-3 head class ×
structures × shape) and ``test_per_layer_templates`` (the template module). Here: training then exporting, LoRA on
the fused projections, the rows a kept unit keeps (by hand), the round trips through a fresh interpreter, the
per-layer attention's config view, what the adapter refuses, and a meta-device export plan.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import PHI3_LORA_TARGETS, randomize_gates, tiny_phi3, with_lora
from test_check_scope import set_gates
from test_export_equivalence import _max_rel_diff
from test_roundtrip import _load_elsewhere, _logits

import lightning_prune as lp
from lightning_prune.adapters.phi3.surgery import UnfusedWeights
from lightning_prune.export.report import count_parameters

HD = 16  # tiny_config's head_dim


def phi3_lora(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    return with_lora(model, seed=seed, targets=PHI3_LORA_TARGETS)


def assert_fused(compact: torch.nn.Module, layer_shapes: list[dict]) -> None:
    """The compact model's projections stay fused, with the kept heads' and channels' rows."""
    d = compact.config.hidden_size
    for layer, shape in zip(compact.model.layers, layer_shapes):
        q, kv, ffn = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
        if q:
            assert layer.self_attn.qkv_proj.weight.shape == ((q + 2 * kv) * HD, d)
            assert layer.self_attn.o_proj.weight.shape == (d, q * HD)
        if ffn:
            assert layer.mlp.gate_up_proj.weight.shape == (2 * ffn, d)
            assert layer.mlp.down_proj.weight.shape == (d, ffn)


def test_a_kept_unit_keeps_its_rows_of_the_fused_projections():
    """By hand, on the usual Phi-3 layout (hidden 64 = 4 heads × 16, 2 KV heads): KV group 1 owns q rows 32..63
    (query heads 2, 3), k rows 64+16..64+31 and v rows 96+16..96+31 of ``qkv_proj`` and o_proj columns 32..63; FFN
    channel c owns rows c and 96 + c of ``gate_up_proj`` and column c of ``down_proj``."""
    model = tiny_phi3(num_attention_heads=4, num_key_value_heads=2)
    config = lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn"), keep_units={"heads": 1, "ffn": 3})
    pruner = lp.attach(model, config)
    pruner.config.match_target = False
    with torch.no_grad():  # keep group 1 and channels 5, 17, 90 in every layer
        pruner.gates["heads"].log_alpha.copy_(torch.tensor([[-5.0, 5.0]] * 2))
        ffn = torch.full((2, 96), -5.0)
        ffn[:, [5, 17, 90]] = 5.0
        pruner.gates["ffn"].log_alpha.copy_(ffn)
    compact = pruner.export()
    assert type(compact).__name__ == "Phi3ForCausalLM"  # uniform: a standard Phi3Config
    assert (compact.config.num_attention_heads, compact.config.num_key_value_heads) == (2, 1)
    assert compact.config.intermediate_size == 3
    rows, channels = torch.cat([torch.arange(32, 64), torch.arange(80, 96), torch.arange(112, 128)]), [5, 17, 90]
    for old, new in zip(model.model.layers, compact.model.layers):
        assert torch.equal(new.self_attn.qkv_proj.weight, old.self_attn.qkv_proj.weight[rows])
        assert torch.equal(new.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, 32:64])
        gate_up = old.mlp.gate_up_proj.weight[channels + [96 + c for c in channels]]
        assert torch.equal(new.mlp.gate_up_proj.weight, gate_up)
        assert torch.equal(new.mlp.down_proj.weight, old.mlp.down_proj.weight[:, channels])


@pytest.mark.parametrize("structures", [("heads", "ffn"), ("hidden",), ("heads", "ffn", "hidden", "mlp_block")])
def test_training_then_export(structures):
    """A few optimizer steps (LoRA and gates, with the pruner's penalty) and an export of what was learned."""
    model = phi3_lora(tiny_phi3())
    pruner = lp.attach(model, lp.L0Config(structures=structures, target_sparsity=0.3, gate_lr=0.1))
    optimizer = torch.optim.Adam(pruner.param_groups(lr=1e-3))
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(4):
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()
    assert pruner.pruning_step == 4
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    assert report.generation_max_abs_diff is not None
    assert count_parameters(compact) == report.params_after < report.params_before
    assert _max_rel_diff(pruner.hf_model, compact) <= 1e-4


def test_lora_on_the_fused_projections_is_merged_before_slicing(tmp_path):
    """The compact model computes what the user's peft wrapper computes: LoRA's ``B A`` of ``qkv_proj`` and
    ``gate_up_proj`` was folded into the fused weight before its rows were split and sliced."""
    wrapper = phi3_lora(tiny_phi3())
    pruner = lp.attach(wrapper, lp.L0Config(structures=("heads", "ffn", "hidden"), target_sparsity=0.1))
    randomize_gates(pruner, seed=4)
    compact = pruner.export()
    pruner.phase = "frozen"  # the deterministic masks the export folded
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        user, small = wrapper.eval()(input_ids=ids).logits, compact(input_ids=ids).logits
        wrapper.base_model.disable_adapter_layers()  # without LoRA: not what the compact model computes
        base = wrapper(input_ids=ids).logits
        wrapper.base_model.enable_adapter_layers()
    assert torch.allclose(user, small, atol=1e-5 * float(user.abs().max()))
    assert not torch.allclose(base, small, atol=1e-3 * float(user.abs().max()))
    reloaded = lp.load_compact(pruner.save_compact(tmp_path / "c", compact=compact))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, small)


# -- round trips through a fresh interpreter without lightning_prune (test_roundtrip's, for Phi-3) -------------------
@pytest.mark.parametrize("structures", [("heads", "ffn"), ("heads", "ffn", "hidden")], ids=["heads+ffn", "+hidden"])
def test_uniform_export_is_a_standard_phi3_checkpoint(tmp_path, structures):
    model = phi3_lora(tiny_phi3())
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=structures, uniform=True))
    randomize_gates(pruner, seed=1)
    compact = pruner.export()
    assert pruner.last_report.uniform and type(compact).__name__ == "Phi3ForCausalLM"
    assert count_parameters(compact) == pruner.last_report.params_after < pruner.last_report.params_before
    assert_fused(compact, pruner.last_report.layer_shapes)
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    saved = transformers.AutoConfig.from_pretrained(path)
    assert saved.model_type == "phi3" and not getattr(saved, "auto_map", None)
    cls, logits = _load_elsewhere(path, trust_remote_code=False)
    assert cls == "Phi3ForCausalLM"
    assert torch.allclose(logits, _logits(compact), atol=1e-5)
    assert torch.allclose(_logits(lp.load_compact(path)), _logits(compact), atol=1e-6)


def test_per_layer_export_loads_with_trust_remote_code_and_load_compact(tmp_path):
    model = tiny_phi3()
    structures = ("heads", "ffn", "hidden", "attn_block")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=structures, keep_units={"attn_block": 1}))
    randomize_gates(pruner, seed=4)
    compact = pruner.export()
    report = pruner.last_report
    assert not report.uniform and type(compact).__name__ == "PrunedPhi3ForCausalLM"
    assert any(s["num_attention_heads"] == 0 for s in report.layer_shapes)  # one attention block removed
    assert_fused(compact, report.layer_shapes)
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    assert (path / "modeling_lightning_prune.py").exists()
    cls, logits = _load_elsewhere(path, trust_remote_code=True)
    assert cls == "PrunedPhi3ForCausalLM"
    assert torch.allclose(logits, _logits(compact), atol=1e-5)
    reloaded = lp.load_compact(path)
    assert torch.allclose(_logits(reloaded), _logits(compact), atol=1e-6)
    assert torch.allclose(_logits(reloaded), _logits(pruner.hf_model), atol=1e-4)
    prompt = torch.tensor([[5, 9, 13]])
    with torch.no_grad():
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_the_per_layer_attention_reads_the_models_config(tmp_path):
    """Each layer's attention reads a view of the model's config with its own counts: an attention implementation
    chosen at load reaches it, and a copy of the model gets views of the copy's config."""
    pruner = lp.attach(tiny_phi3(), lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn")))
    set_gates(pruner, per_layer=True)
    compact = pruner.export()
    assert [s["num_attention_heads"] for s in pruner.last_report.layer_shapes] == [6, 4]
    attn = compact.model.layers[0].self_attn
    assert attn.config.num_attention_heads == 6 and attn.config.num_key_value_heads == 3
    assert attn.config.rope_parameters is compact.config.rope_parameters
    twin = copy.deepcopy(compact)
    assert twin.model.layers[0].self_attn.config._config is twin.config
    assert torch.equal(_logits(twin), _logits(compact))
    path = pruner.save_compact(tmp_path / "c", compact=compact)
    eager = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    assert eager.model.layers[1].self_attn.config._attn_implementation == "eager"
    assert torch.allclose(_logits(eager), _logits(compact), atol=1e-5)


# -- what the adapter refuses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["qk_dims", "v_dims"])
def test_head_dim_structures_are_refused_at_attach(structure):
    model = tiny_phi3()
    message = rf"The phi3 adapter cannot prune \['{structure}'\] of Phi3ForCausalLM: Phi-3's attention reads one"
    with pytest.raises(lp.UnsupportedModelError, match=message):
        lp.attach(model, lp.L0Config(structures=("heads", structure), target_sparsity=0.1))
    assert not hasattr(model, "pruning_gates")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("atp", "ATP does not know the LoRA layout of the 'phi3' adapter"),
        ("pat", r"PAT supports the Llama family \(llama, mistral, qwen2\)"),
    ],
)
def test_methods_without_a_phi3_layout_are_refused_at_attach(method, message):
    config = lp.ATPConfig(target_sparsity=0.3) if method == "atp" else lp.PATConfig(target_hidden_size=48)
    with pytest.raises((lp.PruningConfigError, lp.UnsupportedModelError), match=message):
        lp.attach(phi3_lora(tiny_phi3()), config)


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 6, "long_factor": [2.0] * 6}


def longrope_phi3() -> torch.nn.Module:
    """Longrope rotary scaling (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) on a tiny model: factors over the rotary
    3/4 of head_dim 16 (Phi-4-mini's partial rotary)."""
    rope = {**LONGROPE, "partial_rotary_factor": 0.75}
    return tiny_phi3(
        num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope, original_max_position_embeddings=32
    )


@pytest.mark.parametrize("uniform", [False, True], ids=["per_layer", "uniform"])
def test_longrope_models_export_pruned_heads_per_layer(tmp_path, uniform):
    """Phi3Config checks longrope factors against hidden_size // num_attention_heads: a standard config with fewer
    heads is rejected, so the export is per-layer (nominal config: the original head counts), whatever `uniform`."""
    pruner = lp.attach(longrope_phi3(), lp.L0Config(structures=("heads", "ffn"), target_sparsity=0.2, uniform=uniform))
    pruner.config.match_target = False
    with torch.no_grad():
        kept = [[5.0, -5.0]] * 2 if uniform else [[5.0, -5.0], [5.0, 5.0]]  # group 0 in both layers (+ 1 in layer 1)
        pruner.gates["heads"].log_alpha.copy_(torch.tensor(kept))
    compact = pruner.export()
    report = pruner.last_report
    assert not report.uniform and type(compact).__name__ == "PrunedPhi3ForCausalLM"
    assert report.generation_max_abs_diff is not None
    assert count_parameters(compact) == report.params_after < report.params_before
    assert compact.config.rope_parameters["short_factor"] == LONGROPE["short_factor"]
    path = pruner.save_compact(tmp_path / "c", compact=compact)
    plain = transformers.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    for model in (lp.load_compact(path), plain):
        assert torch.equal(_logits(model), _logits(compact))


def test_longrope_models_refuse_hidden_pruning_at_attach():
    model = longrope_phi3()
    with pytest.raises(lp.UnsupportedModelError, match=r"cannot prune \['hidden'\] of Phi3ForCausalLM: with longrope"):
        lp.attach(model, lp.L0Config(structures=("ffn", "hidden"), target_sparsity=0.1))
    assert not hasattr(model, "pruning_gates")


def test_a_custom_head_on_a_phi3_backbone_is_refused_at_attach():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_phi3("Phi3Model")
            self.config = self.model.config

    supported = "Phi3ForCausalLM, Phi3ForSequenceClassification, Phi3ForTokenClassification, Phi3Model"
    with pytest.raises(lp.UnsupportedModelError, match=rf"The phi3 adapter supports {supported} \(model_type='phi3'\)"):
        lp.attach(Wrapper(), lp.L0Config(structures=("heads",), target_sparsity=0.1))


# -- pieces -----------------------------------------------------------------------------------------------------------
def test_unfused_weights_show_the_fused_rows_as_llama_projections():
    w = torch.arange(12.0)[:, None].expand(12, 2)
    state = {"l.0.qkv.weight": w, "l.0.norm.weight": torch.ones(2)}
    view = UnfusedWeights(state, {"qkv": (("q", 6), ("k", 3), ("v", 3))})
    assert list(view) == ["l.0.q.weight", "l.0.k.weight", "l.0.v.weight", "l.0.norm.weight"] and len(view) == 4
    assert view["l.0.k.weight"][:, 0].tolist() == [6.0, 7.0, 8.0]
    assert view.get("l.0.qkv.weight") is None and view.get("l.0.q.bias") is None
    new = {"l.0.q.weight": w[:2], "l.0.k.weight": w[6:7], "l.0.v.weight": w[9:10]}
    assert view.fuse_(new)["l.0.qkv.weight"][:, 0].tolist() == [0.0, 1.0, 6.0, 9.0] and list(new) == ["l.0.qkv.weight"]


def test_export_plan_on_the_meta_device_matches_the_real_export():
    from lightning_prune.export.merge import MergedWeights
    from lightning_prune.pruner import STATE_ATTRIBUTE, _binary

    config = lp.L0Config(structures=("heads", "ffn", "hidden"), target_sparsity=0.4)
    real = lp.attach(tiny_phi3(), config)
    randomize_gates(real, seed=4)
    with torch.device("meta"):
        meta_model = tiny_phi3()
    planned = lp.attach(meta_model, config)
    planned.state.load_state_dict(real.state.state_dict())
    planned.config.match_target = real.config.match_target
    masks = planned.deterministic_masks()
    compact, info = planned.config.build_compact(
        planned, MergedWeights(planned.model, skip_prefix=STATE_ATTRIBUTE), masks
    )
    assert all(p.is_meta for p in compact.parameters())
    exported = real.export()
    assert info["layer_shapes"] == real.last_report.layer_shapes
    assert (
        count_parameters(compact)
        == count_parameters(exported)
        == int(round(float(planned.cost.total(_binary(masks))[0])))
    )
