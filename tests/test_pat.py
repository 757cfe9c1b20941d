"""PAT (Liu et al., arXiv 2408.14721): HSMs, the shared hidden mask and its schedule, the losses, and the export.

Tiny GQA Llama (8 query heads, 4 KV heads, d = 64), with and without peft LoRA.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError, UnsupportedModelError
from lightning_prune.export.report import count_parameters
from lightning_prune.methods.pat import PATMaskGate, mask_bias, mask_loss, temperature

D, KEEP, RANK = 64, 48, 8


def pat(model, **overrides) -> lp.Pruner:
    values = dict(target_hidden_size=KEEP, hsm_rank=RANK, total_steps=40)
    values.update(overrides)
    return lp.attach(model, lp.PATConfig(**values))


def model_for(lora: bool):
    model = tiny_causal_lm("llama")
    return with_lora(model) if lora else model


def ids(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb_(pruner: lp.Pruner, seed: int = 0) -> None:
    """A non-trivial trained state: mixed-sign mask logits, non-zero W2, scales away from 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pruner.gates["hidden"].logits.copy_(torch.randn(1, D, generator=gen))
        for hsm in pruner.state.method_modules.values():
            hsm.up.copy_(torch.randn(hsm.up.shape, generator=gen) * 0.1)
            hsm.scale.copy_(1 + torch.randn(D, generator=gen) * 0.1)


@pytest.mark.parametrize("lora", [False, True])
def test_init_computes_the_base_function(lora):
    model = model_for(lora)
    x = ids()
    with torch.no_grad():
        reference = model(input_ids=x).logits
    pruner = pat(model)
    assert pruner.state.method_modules["embed"].up.abs().max() == 0  # W2 = 0
    for training in (True, False):  # soft training mask σ(0) + 0.5 = 1 and binary eval mask 1[m >= 0] = 1
        model.train(training)
        with torch.no_grad():
            assert torch.equal(model(input_ids=x).logits, reference)
    assert int(pruner.deterministic_masks()["hidden"].sum()) == D
    perturb_(pruner)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=x).logits, reference)
        pruner.detach()  # hooks and HSMs go: the model computes the base function again
        assert torch.equal(model(input_ids=x).logits, reference)


def test_identity_loss_sums_every_hsm():
    model = tiny_causal_lm("llama")
    pruner = pat(model)
    hsms = pruner.state.method_modules
    layers = model.config.num_hidden_layers
    assert len(hsms) == 1 + 2 * layers
    hooked = {path for path, _ in pruner._hooked}
    assert hooked == {"model.embed_tokens"} | {
        f"model.layers.{l}.{m}" for l in range(layers) for m in ("self_attn.o_proj", "mlp.down_proj")
    }
    pruner.penalty()
    base = pruner.last_terms["pat_identity"]
    expected = sum(float(h.identity_loss().detach()) for h in hsms.values())
    assert base == pytest.approx(expected, rel=1e-6)
    for name, hsm in hsms.items():  # the released code summed only two of them; every one must count here
        saved = hsm.down.detach().clone()
        with torch.no_grad():
            hsm.down.mul_(1.5)
        pruner.penalty()
        assert pruner.last_terms["pat_identity"] != pytest.approx(base, rel=1e-6), name
        with torch.no_grad():
            hsm.down.copy_(saved)


def test_mask_loss_counts_and_polarises():
    logits = torch.tensor([[0.3, -0.2, 0.0, 1.0]], requires_grad=True)  # 3 kept (m >= 0), target 2
    loss = mask_loss(logits, target=2, count_weight=10.0)
    expected = 10 * 1 / 2 + ((0.3 - 0.5) ** 2 + (1.0 - 0.5) ** 2) / 2 + ((-0.2 + 0.5) ** 2 + 0.5**2) / 2
    assert float(loss) == pytest.approx(expected)
    loss.backward()  # straight-through count gradient 10/2 pushes every logit down
    assert (logits.grad > 0).all()
    assert torch.isfinite(mask_loss(torch.zeros(1, 8), target=4))  # empty side of the polarisation: no NaN


def test_schedule_temperature_rises_bias_decays():
    T = 10000
    taus = [temperature(t, T) for t in range(0, T + 1, 500)]
    assert taus[0] == pytest.approx(1.0, rel=1e-5)
    assert all(a < b for a, b in zip(taus[:16], taus[1:17]))  # rises until the freeze at 0.8 T
    assert temperature(8000, T) == pytest.approx(41.3, rel=0.01)  # the paper's τ at the freeze
    assert all(t == taus[16] for t in taus[16:])  # held afterwards
    assert mask_bias(0, T) == 0.5 and mask_bias(2500, T) == pytest.approx(0.25)
    assert mask_bias(5000, T) == 0.0 and mask_bias(9000, T) == 0.0
    gate = PATMaskGate(1, 4, total_steps=T)
    assert not gate.is_frozen(7999) and gate.is_frozen(8000)


def test_training_reaches_the_target_and_freezes_the_mask():
    torch.manual_seed(0)
    model = tiny_causal_lm("llama").train()
    T = 40
    pruner = pat(model, total_steps=T, gate_lr=0.03)
    gate = pruner.gates["hidden"]
    # The paper starts every logit at 0; in a real LLM the task gradients break that tie, in this 64-channel toy
    # they are ~1e-3, far below the count gradient 10/48, so Adam would move all logits together. Small noise
    # stands in for them.
    with torch.no_grad():
        gate.logits.copy_(torch.randn(1, D, generator=torch.Generator().manual_seed(1)) * 0.1)
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    assert [g["name"] for g in pruner.param_groups(lr=1e-3)] == [
        "model",
        "lightning_prune.gates",
        "lightning_prune.modules",
    ]
    freeze_at = int(0.8 * T)
    frozen_logits = None
    gen = torch.Generator().manual_seed(0)
    for step in range(T):
        assert pruner.pruning_step == step
        x = torch.randint(0, 128, (4, 16), generator=gen)
        loss = model(input_ids=x, labels=x).loss + pruner.penalty()
        loss.backward()
        if step >= freeze_at:
            assert gate.logits.grad is None  # frozen: no gradient from the task loss or the mask loss
            assert "pat_mask" not in pruner.last_terms
        else:
            assert gate.logits.grad is not None
        opt.step()
        pruner.step()
        opt.zero_grad()
        if step + 1 == freeze_at:
            frozen_logits = gate.logits.detach().clone()
    assert torch.equal(gate.logits.detach(), frozen_logits)  # no change over the last 20% of the steps
    mask = pruner.deterministic_masks()["hidden"]
    assert int(mask.sum()) == KEEP
    assert pruner.stats()["kept/hidden"] == KEEP
    hsm = pruner.state.method_modules["mlp_1"]
    assert hsm.up.abs().max() > 0  # the HSMs trained in their own group


def expected_compact_params(config, kept: int) -> int:
    hd, nh, nkv, ffn, V, L = 16, config.num_attention_heads, config.num_key_value_heads, 96, 128, 2
    layer = (nh * hd + 2 * nkv * hd) * kept + kept * nh * hd + 3 * ffn * kept + 2 * kept
    return V * kept + L * layer + kept + V * kept


@pytest.mark.parametrize("lora, exact_target", [(False, False), (True, False), (True, True)])
def test_export_folds_hsms_and_slices_hidden(lora, exact_target, tmp_path):
    model = model_for(lora)
    pruner = pat(model)
    perturb_(pruner)
    logits = pruner.gates["hidden"].logits
    if exact_target:  # d' = 48: a standard LlamaConfig (48 = 8 heads · 6); otherwise the per-layer classes
        with torch.no_grad():
            logits.copy_(torch.where(logits.argsort(dim=-1).argsort(dim=-1) >= D - KEEP, 0.5, -0.5))
    kept = int((logits >= 0).sum())
    assert 0 < kept < D and (kept == KEEP) == exact_target
    compact = pruner.export()
    assert compact.config.hidden_size == kept
    assert pruner.last_report.uniform == exact_target
    assert not any("lora_" in n or "pruning_gates" in n for n, _ in compact.named_parameters())
    assert count_parameters(compact) == expected_compact_params(model.config, kept)
    assert count_parameters(compact) == pruner.last_report.params_after
    assert compact.config.rms_norm_eps == pytest.approx(1e-6 * D / kept)
    x = ids(3, batch=3, length=10)
    model.eval()
    with torch.no_grad():
        gated = model(input_ids=x).logits.float()
        out = compact(input_ids=x).logits.float()
    assert float((gated - out).abs().max()) <= 1e-4 * float(gated.abs().max())
    assert pruner.last_report.max_abs_diff <= 1e-4 * pruner.last_report.reference_scale
    pruner.save_compact(tmp_path / "compact", compact=compact)
    reloaded = lp.load_compact(tmp_path / "compact").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, out, atol=1e-6)


def test_norm_rescale_is_needed(monkeypatch):
    """Without the sqrt(d/d') rescale of the norms the export check refuses the model."""
    from lightning_prune.errors import ExportMismatchError
    from lightning_prune.methods.pat import config as config_module
    from lightning_prune.methods.pat.fold import fold_hsms_

    def without_norm_rescale(state, hsms, prefix, num_layers, kept, hidden):
        fold_hsms_(state, hsms, prefix, num_layers, hidden, hidden)  # factor sqrt(d/d) = 1

    pruner = pat(tiny_causal_lm("llama"))
    perturb_(pruner)
    monkeypatch.setattr(config_module, "fold_hsms_", without_norm_rescale)
    with pytest.raises(ExportMismatchError):
        pruner.export()


def test_state_travels_in_the_model_state_dict():
    model = tiny_causal_lm("llama")
    pruner = pat(model)
    perturb_(pruner, seed=5)
    state = model.state_dict()
    assert "pruning_gates.method_modules.attn_1.up" in state and "pruning_gates.gates.hidden.logits" in state
    x = ids(1)
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=x).logits
    fresh = tiny_causal_lm("llama", seed=9)
    pat(fresh)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=x).logits, reference)


def test_unsupported_family_and_tied_embeddings():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="PAT supports the Llama family"):
        pat(gpt2, target_hidden_size=16)
    assert not hasattr(gpt2, "pruning_gates")  # refused before anything was attached
    tied = tiny_causal_lm("llama", tie_word_embeddings=True)
    with pytest.raises(UnsupportedModelError, match="tie_word_embeddings"):
        pat(tied)
    with pytest.raises(UnsupportedModelError, match="Llama family"):
        pat(tiny_causal_lm("qwen3"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"target_hidden_size": None}, "target_hidden_size"),
        ({"target_hidden_size": 0}, "target_hidden_size"),
        ({"target_hidden_size": 48.0}, "target_hidden_size"),
        ({"target_hidden_size": 48, "target_sparsity": 0.25}, "HINT: pass `target_hidden_size`"),
        ({"target_hidden_size": 48, "structures": ("heads",)}, "hidden channels only"),
        ({"target_hidden_size": 48, "total_steps": 1}, "total_steps"),
        ({"target_hidden_size": 48, "freeze_fraction": 0.0}, "freeze_fraction"),
        ({"target_hidden_size": 48, "match_target": True}, "match_target"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(PruningConfigError, match=match):
        lp.PATConfig(**overrides)


@pytest.mark.parametrize("size, match", [(64, "smaller than the model's hidden_size=64"), (100, "smaller than")])
def test_target_hidden_size_must_fit_the_model(size, match):
    model = tiny_causal_lm("llama")
    with pytest.raises(PruningConfigError, match=match):
        pat(model, target_hidden_size=size)
    assert not hasattr(model, "pruning_gates")
    with pytest.raises(PruningConfigError, match="hsm_rank"):
        pat(model, hsm_rank=65)


def test_registered_by_name():
    from lightning_prune.methods import method_config_class

    assert method_config_class("pat") is lp.PATConfig
    assert math.isclose(pat(tiny_causal_lm("llama")).current_target(), 1 - KEEP / D)


def test_lightning_callback_phases_drive_the_schedule(tmp_path):
    """With PruningCallback: pruning_step = global_step - dense_steps drives τ/b/freeze; HSMs get their own
    optimizer group (the user's lr, no weight decay) and keep training after the mask froze; the export reloads."""
    import lightning as L
    from lightning_helpers import lit_llama, loader, trainer

    from lightning_prune.integrations.optim import GATE_GROUP, MODULE_GROUP

    torch.manual_seed(0)
    module = lit_llama()
    config = lp.PATConfig(target_hidden_size=KEEP, hsm_rank=RANK, total_steps=10, gate_lr=0.03)
    callback = lp.PruningCallback(config, export_dir=tmp_path / "out", dense_steps=2, plot=False)
    seen: list[tuple[int, int, str, torch.Tensor, torch.Tensor]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            pruner = callback._pruner
            hsm_up = pruner.state.method_modules["mlp_0"].up.detach().clone()
            seen.append(
                (
                    trainer.global_step,
                    pruner.pruning_step,
                    pruner.phase,
                    pruner.gates["hidden"].logits.detach().clone(),
                    hsm_up,
                )
            )

    fit = trainer(12, [callback, Record()])
    fit.fit(module, loader(48))
    groups = {g.get("name"): g for g in fit.optimizers[0].param_groups}
    assert {GATE_GROUP, MODULE_GROUP} <= set(groups)
    assert groups[MODULE_GROUP]["weight_decay"] == 0.0 and groups[MODULE_GROUP]["lr"] == 1e-3
    pruner = callback._pruner
    assert {id(p) for p in groups[MODULE_GROUP]["params"]} == {id(p) for p in pruner.module_parameters()}
    assert [s[2] for s in seen[:2]] == ["dense", "dense"] and all(s[2] == "prune" for s in seen[2:])
    assert all(s[1] == max(s[0] - 1 - 2, 0) for s in seen)  # the pruning step of the batch just taken
    frozen = [s for s in seen if s[1] >= 8]  # batches run at pruning step >= 0.8 · 10
    assert len(frozen) >= 2
    assert all(torch.equal(s[3], frozen[0][3]) for s in frozen)  # mask unchanged once frozen
    assert not torch.equal(frozen[0][4], frozen[-1][4])  # HSMs still train
    compact = lp.load_compact(tmp_path / "out")
    assert compact.config.hidden_size == int((pruner.gates["hidden"].logits >= 0).sum())
