"""ATP's attention-dim structures (Lu et al., arXiv 2412.14426): ``qk_dims`` (a K/Q mask over RoPE pairs of
head_dim, shared by every head of a layer) and ``v_dims`` (a V mask over head_dim), on the Llama family.

Tiny models with GQA (8 query heads over 4 KV heads, head_dim 16, 2 layers), with and without peft LoRA. Llama
has plain q/k, Qwen2 q/k/v biases, Qwen3 RMSNorms over head_dim on q and k (given random weights here, so that a
wrong slice of them shows).
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, with_lora
from test_atp import batch, capture, frozen_path, max_diff, merged_weight
from test_roundtrip import _load_elsewhere
from torch import nn

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.export.report import count_parameters
from lightning_prune.methods.atp import ATPController

D, HD, NH, NKV, L, SEQ = 64, 16, 8, 4, 2, 512  # SEQ: the default flops_seq_len
DIMS = ("qk_dims", "v_dims")


def tiny(family: str, seed: int = 0) -> nn.Module:
    model = tiny_causal_lm(family, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # RMSNorm weights start at 1: random ones make a wrong slice of q_norm/k_norm visible
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen))
    return model


def attach(family: str, lora: bool, structures=DIMS, seed: int = 0, **config) -> lp.Pruner:
    model = tiny(family)
    if lora:
        model = with_lora(model)
    pruner = lp.attach(model, lp.L0Config(structures=structures, **{"target_sparsity": 0.1, **config}))
    randomize_gates(pruner, seed=seed)
    return pruner


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def kept_dims(masks: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """Per layer: kept q/k dims of a head (2 per kept pair) and kept value dims."""
    return [2 * int(m.sum()) for m in masks["qk_dims"]], [int(m.sum()) for m in masks["v_dims"]]


# -- export: equivalence, exact counts, round trip ------------------------------------------------------------------
CASES = [(f, lora) for f in ("llama", "qwen2", "qwen3") for lora in (False, True)]


@pytest.mark.parametrize("family,lora", CASES, ids=[f"{f}-{'lora' if x else 'plain'}" for f, x in CASES])
def test_export_equals_gated_model_with_exact_counts_and_round_trip(tmp_path, family, lora):
    pruner = attach(family, lora, seed=3)
    masks = {k: (v != 0).double() for k, v in pruner.deterministic_masks().items()}
    qk, v = kept_dims(masks)
    assert all(0 < q < HD for q in qk) and all(0 < x < HD for x in v)  # every layer prunes some of both, keeps some

    compact = pruner.export()
    report = pruner.last_report
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))
    gated = logits(pruner.hf_model, ids)
    assert max_diff(gated, logits(compact, ids)) <= 1e-5 * float(gated.abs().max())
    assert report.max_abs_diff <= 1e-4 * report.reference_scale and not report.uniform

    # exact parameters, by hand: every head loses the same rows of q/k (and of v / o_proj's columns)
    dense = count_parameters(tiny_causal_lm(family))
    removed_w = sum(D * (NH + NKV) * (HD - q) + D * (NKV + NH) * (HD - x) for q, x in zip(qk, v))
    removed = removed_w
    if family == "qwen2":  # q/k/v biases
        removed += sum((NH + NKV) * (HD - q) + NKV * (HD - x) for q, x in zip(qk, v))
    if family == "qwen3":  # q_norm and k_norm over the kept q/k dims
        removed += sum(2 * (HD - q) for q in qk)
    exact = int(round(float(pruner.cost.total(masks)[0])))
    assert count_parameters(compact) == exact == report.params_after == dense - removed
    # FLOPs per token: 2 per weight element, plus scores (2·T per q/k dim) and weighted values (2·T per v dim)
    removed_flops = 2 * removed_w + 2 * SEQ * NH * sum((HD - q) + (HD - x) for q, x in zip(qk, v))
    assert report.flops_per_token_before - report.flops_per_token_after == pytest.approx(removed_flops, rel=1e-12)

    for l, (shape, layer) in enumerate(zip(report.layer_shapes, compact.model.layers)):
        attn = layer.self_attn
        assert (shape["qk_dim"], shape["v_dim"]) == (qk[l], v[l]) and len(shape["rope_pairs"]) == qk[l] // 2
        assert attn.q_proj.out_features == NH * qk[l] and attn.k_proj.out_features == NKV * qk[l]
        assert attn.v_proj.out_features == NKV * v[l] and attn.o_proj.in_features == NH * v[l]
        assert attn.scaling == HD**-0.5  # the original scaling: pruned dims left the dot product, nothing else

    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = lp.load_compact(path)
    assert count_parameters(reloaded) == exact
    assert torch.equal(logits(reloaded, ids), logits(compact, ids))
    prompt = ids[:1, :4]
    with torch.no_grad():  # the KV cache holds keys and values of different widths per layer
        cached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True)
        uncached = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_with_every_llama_structure_and_remote_code_loading(tmp_path):
    pruner = attach("qwen3", True, structures=("heads", "ffn", "hidden", "qk_dims", "v_dims"), seed=4)
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    binary = {k: (m != 0).double() for k, m in pruner.deterministic_masks().items()}
    assert count_parameters(compact) == int(round(float(pruner.cost.total(binary)[0]))) == report.params_after
    assert any(s["num_key_value_heads"] < NKV for s in report.layer_shapes)
    path = pruner.save_compact(tmp_path / "compact", compact=compact)
    cls, remote = _load_elsewhere(path, trust_remote_code=True)  # without lightning_prune
    assert cls == "PrunedQwen3ForCausalLM"
    ids = torch.tensor([[3, 17, 99, 5, 42, 8, 77, 1, 0, 63]])
    assert torch.allclose(remote, logits(compact, ids), atol=1e-5)


@pytest.mark.parametrize("keep", [{"qk_dims": 0}, {"v_dims": 0}, {"qk_dims": 0, "v_dims": 0}])
def test_layers_with_no_qk_or_no_value_dims_left(keep):
    """No q/k dims: uniform attention over the causal window; no value dims: the block writes only its bias."""
    pruner = attach("qwen2", False, seed=1, target_sparsity=0.0, keep_units=keep)
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    for name, count in keep.items():
        assert all(s["qk_dim" if name == "qk_dims" else "v_dim"] == count for s in report.layer_shapes)
    assert count_parameters(compact) == report.params_after


def test_scaled_masks_fold_into_q_k_and_o_proj():
    """Polarization's eval masks are γ·binary: γ on a pair scales q and k (q·k sees γ²), γ on a value dim o_proj."""
    model = with_lora(tiny("llama"))
    pruner = lp.attach(model, lp.PolarizationConfig(structures=DIMS, match_target=False))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in pruner.gates.values():
            low = torch.rand(gate.gamma.shape, generator=gen) < 0.3
            gate.gamma.copy_(torch.where(low, 0.0, 0.5 + 0.5 * torch.rand(gate.gamma.shape, generator=gen)))
    masks = pruner.deterministic_masks()
    assert bool(((masks["qk_dims"] > 0) & (masks["qk_dims"] < 1)).any()) and bool((masks["v_dims"] == 0).any())
    pruner.export()
    assert pruner.last_report.max_abs_diff <= 1e-4 * pruner.last_report.reference_scale
    qwen3 = lp.attach(
        tiny("qwen3"), lp.PolarizationConfig(structures=("qk_dims",), target_sparsity=0.1, match_target=False)
    )
    with torch.no_grad():
        qwen3.gates["qk_dims"].gamma.mul_(0.7)
    with pytest.raises(ValueError, match="qk_dims mask must be binary.*q/k RMSNorms"):
        qwen3.export()


# -- the unit is a RoPE pair -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_one_pruned_unit_zeroes_exactly_dims_i_and_i_plus_half(family):
    j = 3
    model = tiny(family)
    pruner = lp.attach(model, lp.L0Config(structures=("qk_dims",), target_sparsity=0.0, keep_units={"qk_dims": 7}))
    with torch.no_grad():
        log_alpha = next(pruner.gates["qk_dims"].parameters())
        log_alpha.fill_(3.0)
        log_alpha[:, j] = -3.0  # the lowest score in every layer: the one pruned unit
    attn = pruner.adapter.layers[1].self_attn
    # where the mask acts: q/k_proj outputs (Llama), q/k_norm outputs over the kept dims (Qwen3); both before RoPE
    names = ("q_norm", "k_norm") if family == "qwen3" else ("q_proj", "k_proj")
    store: dict = {}
    handles = [capture(getattr(attn, n), store, n) for n in names]  # registered after the pruner's: sees its output
    ids = batch()["input_ids"]
    logits(model, ids)
    for h in handles:
        h.remove()
    pruner.set_phase("dense")
    dense_store: dict = {}
    handles = [capture(getattr(attn, n), dense_store, n) for n in names]
    logits(model, ids)
    for h in handles:
        h.remove()
    pruner.set_phase("prune")
    for n in names:
        out = store[n][1].reshape(*store[n][1].shape[:2], -1, HD)  # (batch, seq, heads, head_dim)
        dense = dense_store[n][1].reshape(out.shape)
        zero = torch.zeros(HD, dtype=torch.bool)
        zero[[j, j + HD // 2]] = True
        assert float(out[..., zero].abs().max()) == 0.0  # dims j and j + head_dim/2 of every head
        assert bool((out[..., ~zero].abs().amax(dim=(0, 1, 2)) > 0).all())  # and no other dim
        assert float(dense[..., zero].abs().max()) > 0  # the check is not vacuous

    # why the pair: rotate_half mixes dim i with i + head_dim/2, so zeroing one of them alone leaks through RoPE
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = torch.randn(1, 1, 8, HD)
    position_ids = torch.arange(8)[None]
    cos, sin = pruner.adapter.backbone.rotary_emb(x, position_ids)
    single, pair = x.clone(), x.clone()
    single[..., j] = 0
    pair[..., [j, j + HD // 2]] = 0
    rotated_single = apply_rotary_pos_emb(single, single, cos, sin)[0]
    rotated_pair = apply_rotary_pos_emb(pair, pair, cos, sin)[0]
    assert float(rotated_single[..., 1:, j].abs().min()) > 0  # a lone zero does not stay zero
    assert float(rotated_pair[..., [j, j + HD // 2]].abs().max()) == 0.0

    # the compact layout: per head, the kept first members then their partners (rotate_half pairs them again)
    compact = pruner.export()
    kept = torch.tensor([i for i in range(HD // 2) if i != j])
    index = torch.cat([kept, kept + HD // 2])
    original = model.model.layers[1].self_attn.q_proj.weight.detach().view(NH, HD, D)
    assert torch.equal(compact.model.layers[1].self_attn.q_proj.weight.detach().view(NH, HD - 2, D), original[:, index])
    assert compact.model.layers[1].self_attn.rope_pairs == kept.tolist()


# -- training: gradients, ATP's asymmetric forward and group lasso ----------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_l0_gates_of_head_dims_get_gradients(family):
    pruner = attach(family, True, seed=2)
    randomize_gates(pruner, seed=2, std=0.5)  # samples inside (0, 1): a sample clamped at 0 or 1 has no gradient
    model = pruner.model.train()
    torch.manual_seed(0)
    loss = model(**batch()).loss + pruner.penalty()
    loss.backward()
    for name in DIMS:
        grad = next(pruner.gates[name].parameters()).grad
        assert grad is not None and bool((grad.abs().sum(-1) > 0).all()), name  # every layer's gate learns


def attach_atp(family: str = "llama", **overrides) -> tuple[nn.Module, lp.Pruner, ATPController]:
    model = with_lora(tiny(family))
    config = lp.ATPConfig(**{"target_sparsity": 0.3, "structures": ("ffn", "qk_dims", "v_dims"), **overrides})
    pruner = lp.attach(model, config)
    return model, pruner, ATPController(pruner)


def spread(pruner, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pruner.gates["qk_dims"].generator.heads.values():
            p.copy_(torch.randn(p.shape, generator=gen))


def test_atp_lora_mode_masks_the_frozen_path_of_q_k_v_and_generator_mode_the_merged_path():
    model, pruner, atp = attach_atp(generator_masks="hard")  # binary samples: pruned dims are exact zeros
    spread(pruner)
    masks = pruner.deterministic_masks()
    attn = pruner.adapter.layers[1].self_attn
    m_qk, m_v = masks["qk_dims"][1], masks["v_dims"][1]
    assert 0 < int(m_qk.sum()) < HD // 2 and 0 < int(m_v.sum()) < HD
    store: dict = {}
    handles = [capture(attn.q_proj, store, "q"), capture(attn.k_proj, store, "k"), capture(attn.v_proj, store, "v")]
    handles.append(capture(attn.o_proj.base_layer, store, "o_in", pre=True))
    model.eval()
    with atp.mode("lora"), torch.no_grad():
        model(**batch())
    pairs = m_qk.repeat(2)
    for key, module, heads in (("q", attn.q_proj, NH), ("k", attn.k_proj, NKV)):
        x, y = store[key]
        assert max_diff(y, frozen_path(module, x, pairs.repeat(heads))) < 1e-5  # m ⊙ (W x + b) + B A x
    x, y = store["v"]
    assert max_diff(y, frozen_path(attn.v_proj, x, m_v.repeat(NKV))) < 1e-5
    pruned_cols = m_v.repeat(NH) == 0
    assert float(store["o_in"][..., pruned_cols].abs().max()) > 1e-4  # LoRA path of pruned value dims is live

    torch.manual_seed(3)
    model.train()
    with atp.mode("generator"):
        model(**batch())
        s_qk, s_v = pruner.mask("qk_dims")[1].detach(), pruner.mask("v_dims")[1].detach()
    for h in handles:
        h.remove()
    x, y = store["q"]
    assert max_diff(y, (x @ merged_weight(attn.q_proj).T) * s_qk.repeat(2).repeat(NH)) < 1e-5  # (W + BA)x ⊙ m
    cols = s_v.repeat(NH) == 0
    assert bool(cols.any()) and float(store["o_in"][..., cols].abs().max()) == 0.0
    assert float(store["o_in"][..., ~cols].abs().max()) > 0.0


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_atp_trains_prunes_attention_dims_zeroes_their_lora_groups_and_exports(family):
    torch.manual_seed(0)
    model, pruner, atp = attach_atp(family, control_steps=20, gate_lr=1e-2)
    lora_opt, gen_opt = atp.optimizers(lr=1e-3)
    model.train()
    for i in range(20):
        atp.generator_step(batch(i % 3), gen_opt)
        atp.lora_step(batch(10 + i % 3), lora_opt)
    assert atp.frozen and abs(atp.kept_fraction() - 0.7) <= 0.05
    masks = pruner.deterministic_masks()
    assert all(bool((masks[s] == 0).any()) for s in DIMS)  # the generator pruned attention dims
    assert atp.pruned_lora_norm() > 1e-2  # at the freeze the pruned groups are still alive
    for i in range(10):
        atp.lora_step(batch(i), lora_opt)

    def lora(module, name: str) -> torch.Tensor:
        return getattr(module, name)["default"].weight.detach()

    zeroed = 0
    for l, layer in enumerate(pruner.adapter.layers):
        attn = layer.self_attn
        qk_rows = masks["qk_dims"][l].repeat(2) == 0  # pruned dims of one head
        v_rows = masks["v_dims"][l] == 0
        for module, heads, pruned in (
            (attn.q_proj, NH, qk_rows),
            (attn.k_proj, NKV, qk_rows),
            (attn.v_proj, NKV, v_rows),
        ):
            b = lora(module, "lora_B").view(heads, HD, -1)
            assert float(b[:, pruned].abs().sum()) == 0.0  # exactly zero: pruned dims' B rows, all heads
            assert float(b[:, ~pruned].norm(dim=-1).min()) > 0.0  # kept rows untouched
            zeroed += int(pruned.sum()) * heads
        a = lora(attn.o_proj, "lora_A").view(-1, NH, HD)
        assert float(a[:, :, v_rows].abs().sum()) == 0.0  # o_proj's A columns of pruned value dims
        assert float(a[:, :, ~v_rows].norm(dim=0).min()) > 0.0
        zeroed += int(v_rows.sum()) * NH
    assert zeroed > 0 and atp.pruned_lora_norm() == 0.0

    compact = pruner.export()  # checks compact == gated eval model (merged path)
    ids = batch(99)["input_ids"]
    model.eval()
    with atp.mode("lora"), torch.no_grad():
        trained = model(input_ids=ids).logits  # what the LoRA update trained on: frozen-path masks
    assert max_diff(trained, logits(compact, ids)) <= 1e-5 * float(trained.abs().max())


# -- bad input and honest limits -----------------------------------------------------------------------------------
def test_head_dims_on_gpt2_or_bert_name_the_supported_structures():
    from test_bert_adapter import tiny_encoder
    from test_gpt2_adapter import tiny_gpt2

    for build, name in ((tiny_gpt2, "gpt2"), (tiny_encoder, "bert")):
        with pytest.raises(
            PruningConfigError,
            match=rf"Unknown structure\(s\) \['qk_dims'\] for the {name} adapter \(qk_dims: .*RoPE pair.*Llama "
            r"family\)\)\. Available: \['heads', 'ffn', 'hidden', 'attn_block', 'mlp_block'\]",
        ):
            lp.attach(build(), lp.L0Config(structures=("heads", "qk_dims")))
    with pytest.raises(PruningConfigError, match=r"ATP prunes \['heads', 'ffn', 'qk_dims', 'v_dims'\].*'hidden'"):
        lp.ATPConfig(structures=("qk_dims", "hidden"))


def test_uniform_counts_still_export_per_layer_and_say_so(caplog):
    model = tiny("llama")
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        pruner = lp.attach(model, lp.L0Config(structures=DIMS, target_sparsity=0.1, uniform=True))
    assert "uniform=True" in caplog.text and "per-layer modeling file" in caplog.text
    randomize_gates(pruner, seed=3)
    pruner.export()
    shapes = pruner.last_report.layer_shapes
    assert not pruner.last_report.uniform and shapes[0]["qk_dim"] < HD
    assert all((s["qk_dim"], s["v_dim"]) == (shapes[0]["qk_dim"], shapes[0]["v_dim"]) for s in shapes)
