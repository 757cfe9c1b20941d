"""ATP (Lu et al., arXiv 2412.14426): decision generator, asymmetric LoRA-aware forward, group lasso, budget.

Tiny Llama with GQA (8 query heads over 4 KV groups, 2 layers, FFN 96) and peft LoRA on every projection.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm, with_lora
from torch import nn

import lightning_prune as lp
from lightning_prune.errors import AttachStateError, PruningConfigError
from lightning_prune.gates.generator import GeneratorBackbone, register_generator_backbone
from lightning_prune.methods.atp import ATPController

D, HD, NH, NKV, FFN, L = 64, 16, 8, 4, 96, 2
REP = NH // NKV


def attach_atp(seed: int = 0, **overrides) -> tuple[nn.Module, lp.Pruner, ATPController]:
    model = with_lora(tiny_causal_lm("llama", seed=seed))
    config = lp.ATPConfig(**{"target_sparsity": 0.5, **overrides})
    pruner = lp.attach(model, config)
    return model, pruner, ATPController(pruner)


def generator_of(pruner):
    return pruner.gates["ffn"].generator


def spread_generator(pruner, seed: int = 0, std: float = 1.0) -> None:
    """Random heads: logits of a few units each way of the threshold, so masks are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in generator_of(pruner).heads.values():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def batch(seed: int = 0, size: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 128, (size, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def lora_params(model) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def capture(module: nn.Module, store: dict, key: str, pre: bool = False):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach().clone()))
    return module.register_forward_hook(
        lambda m, args, out: store.__setitem__(key, (args[0].detach().clone(), out.detach().clone()))
    )


def merged_weight(module) -> torch.Tensor:
    return module.base_layer.weight + module.scaling["default"] * (
        module.lora_B["default"].weight @ module.lora_A["default"].weight
    )


def frozen_path(module, x: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """``m ⊙ (W x + b) + s·B A x`` computed by hand."""
    base = nn.functional.linear(x, module.base_layer.weight, module.base_layer.bias)
    lora = module.scaling["default"] * (x @ module.lora_A["default"].weight.T @ module.lora_B["default"].weight.T)
    return base * row_mask + lora


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max().detach())


# -- the generator ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["transformer", "gru"])
def test_generator_shapes_init_keep_and_training_samples(backbone):
    model, pruner, _ = attach_atp(generator_backbone=backbone)
    assert pruner.gates["heads"].generator is pruner.gates["ffn"].generator  # one network decides everything
    generator = generator_of(pruner)
    assert {id(p) for p in pruner.gate_parameters()} == {id(p) for p in generator.parameters()}
    masks = pruner.deterministic_masks()
    assert masks["heads"].shape == (L, NKV) and masks["ffn"].shape == (L, FFN)
    assert bool((masks["heads"] == 1).all()) and bool((masks["ffn"] == 1).all())  # offset 3: every unit kept
    model.train()
    torch.manual_seed(0)
    samples = [pruner._sample_masks() for _ in range(20)]
    for s in samples:
        assert s["heads"].shape == (L, NKV) and s["ffn"].shape == (L, FFN)
        assert bool(((s["ffn"] == 0) | (s["ffn"] == 1)).all())  # binary in the forward pass (straight-through)
    kept = torch.stack([s["ffn"].detach() for s in samples]).mean()
    assert 0.9 < float(kept) < 1.0  # mostly kept at init, a few explored (P(prune) = σ(−3) ≈ 0.047)


def test_eval_masks_are_hard_batch_independent_thresholds():
    model, pruner, _ = attach_atp()
    spread_generator(pruner)
    model.eval()
    seen = []
    for seed in (0, 1):
        with torch.no_grad():
            model(**batch(seed, size=2 + seed))
        seen.append({k: pruner.mask(k).clone() for k in ("heads", "ffn")})
    generator = generator_of(pruner)
    for name in ("heads", "ffn"):
        assert torch.equal(seen[0][name], seen[1][name])
        assert bool(((seen[0][name] == 0) | (seen[0][name] == 1)).all())
        with torch.no_grad():
            threshold = (generator.logits(name) + generator.offset >= 0).float()
        assert torch.equal(seen[0][name], threshold)
        assert 0 < int(threshold.sum()) < threshold.numel()  # the check is not vacuous


def test_swapping_in_a_registered_backbone():
    @register_generator_backbone("test_mlp")
    class MLPBackbone(GeneratorBackbone):
        def __init__(self, dim: int) -> None:
            super().__init__(dim)
            self.net = nn.Sequential(nn.Linear(dim, 32), nn.GELU())
            self.out_features = 32

        def forward(self, x):
            return self.net(x)

    model, pruner, atp = attach_atp(generator_backbone="test_mlp", control_steps=2)
    assert isinstance(generator_of(pruner).backbone, MLPBackbone)
    assert generator_of(pruner).heads["ffn"].shape == (L, FFN, 32)
    lora_opt, gen_opt = atp.optimizers()
    before = [p.detach().clone() for p in generator_of(pruner).backbone.parameters()]
    model.train()
    assert atp.generator_step(batch(), gen_opt) is not None
    after = list(generator_of(pruner).backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the custom backbone is trained
    with pytest.raises(PruningConfigError, match=r"Unknown generator backbone 'nope'.*'gru'.*'transformer'"):
        lp.ATPConfig(generator_backbone="nope")


# -- the asymmetric forward -----------------------------------------------------------------------------------
def test_lora_mode_masks_only_the_frozen_path():
    model, pruner, atp = attach_atp()
    spread_generator(pruner)
    layer = pruner.adapter.layers[1]
    masks = pruner.deterministic_masks()
    assert 0 < int(masks["ffn"][1].sum()) < FFN and 0 < int(masks["heads"][1].sum()) < NKV
    store: dict = {}
    handles = [
        capture(layer.mlp.up_proj, store, "up"),
        capture(layer.mlp.gate_proj, store, "gate"),
        capture(layer.self_attn.v_proj, store, "v"),
        capture(layer.self_attn.q_proj, store, "q"),
        capture(layer.mlp.down_proj.base_layer, store, "down_in", pre=True),
    ]
    model.eval()
    with atp.mode("lora"), torch.no_grad():
        model(**batch())
    for h in handles:
        h.remove()
    m_ffn, m_heads = masks["ffn"][1], masks["heads"][1]
    x, y = store["up"]
    assert max_diff(y, frozen_path(layer.mlp.up_proj, x, m_ffn)) < 1e-5
    x, y = store["v"]
    assert max_diff(y, frozen_path(layer.self_attn.v_proj, x, m_heads.repeat_interleave(HD))) < 1e-5
    x, y = store["q"]
    assert max_diff(y, frozen_path(layer.self_attn.q_proj, x, m_heads.repeat_interleave(REP * HD))) < 1e-5
    # the merged-path mask is off: down_proj reads act(gate)·up unmasked, so pruned channels still carry B A x
    expected = nn.functional.silu(store["gate"][1]) * store["up"][1]
    assert max_diff(store["down_in"], expected) < 1e-5
    pruned = m_ffn == 0
    assert float(store["down_in"][..., pruned].abs().max()) > 1e-4  # the LoRA path of pruned units is live


def test_generator_mode_masks_the_merged_output():
    model, pruner, atp = attach_atp(generator_masks="hard")  # binary samples: exact zeros to check
    spread_generator(pruner)
    layer = pruner.adapter.layers[1]
    store: dict = {}
    handles = [
        capture(layer.mlp.up_proj, store, "up"),
        capture(layer.mlp.gate_proj, store, "gate"),
        capture(layer.mlp.down_proj.base_layer, store, "down_in", pre=True),
        capture(layer.self_attn.o_proj.base_layer, store, "o_in", pre=True),
    ]
    model.train()
    torch.manual_seed(3)
    with atp.mode("generator"):
        model(**batch())
        m_ffn, m_heads = pruner.mask("ffn")[1].detach(), pruner.mask("heads")[1].detach()
    for h in handles:
        h.remove()
    assert 0 < int(m_ffn.sum()) < FFN
    x, y = store["up"]
    assert max_diff(y, x @ merged_weight(layer.mlp.up_proj).T) < 1e-5  # the frozen-path mask is off
    expected = nn.functional.silu(store["gate"][1]) * store["up"][1] * m_ffn  # (W + BA)x ⊙ m
    assert max_diff(store["down_in"], expected) < 1e-5
    assert float(store["down_in"][..., m_ffn == 0].abs().max()) == 0.0
    # heads: every o_proj input column of a pruned KV group (its REP query heads) is exactly zero
    cols = m_heads.repeat_interleave(REP * HD) == 0
    assert bool(cols.any())  # the sample prunes a KV group of this layer
    assert float(store["o_in"][..., cols].abs().max()) == 0.0
    assert float(store["o_in"][..., ~cols].abs().max()) > 0.0


def test_generator_update_uses_soft_samples_and_a_budget_on_their_binary_form():
    """As in the released code's ``hypernet_step``: the task forward sees ``σ((z + g + b)/T)`` itself, the budget
    (``budget_on="samples"``) its binary straight-through form; ``"hard"`` gives that binary form to the forward."""
    assert lp.ATPConfig().generator_masks == "soft"  # the default
    masks = {}
    for kind in ("soft", "hard"):  # the same seeded model and generator for both kinds
        model, pruner, atp = attach_atp(budget_on="samples", generator_masks=kind)
        spread_generator(pruner)
        layer = pruner.adapter.layers[1]
        store: dict = {}
        handles = [
            capture(layer.mlp.up_proj, store, "up"),
            capture(layer.mlp.gate_proj, store, "gate"),
            capture(layer.mlp.down_proj.base_layer, store, "down_in", pre=True),
        ]
        model.train()
        torch.manual_seed(3)  # the same Gumbel noise for both kinds
        with atp.mode("generator"):
            model(**batch())
            masks[kind] = {k: pruner.mask(k).detach().clone() for k in ("heads", "ffn")}
            penalty = float(pruner.penalty())
        binary = {k: (m >= 0.5).float() for k, m in masks[kind].items()}
        ratio = pruner.state.regularizer.ratio_loss(pruner, binary)
        assert penalty == pytest.approx(5.0 * float(ratio), rel=1e-6)  # the budget counts hard decisions
        if kind == "soft":
            m = masks["soft"]["ffn"][1]
            expected = nn.functional.silu(store["gate"][1]) * store["up"][1] * m  # (W + BA)x ⊙ soft m
            assert max_diff(store["down_in"], expected) < 1e-5
        for h in handles:
            h.remove()
    soft = masks["soft"]["ffn"]
    assert bool(((soft > 0.01) & (soft < 0.99)).any())  # not binary: the relaxation itself
    for k in ("heads", "ffn"):
        assert torch.equal(masks["hard"][k], (masks["soft"][k] >= 0.5).float())  # hard = the soft sample, binarised
    assert not any(g.generator.relaxed for g in pruner.gates.values())  # leaving the mode restores binary samples
    sample = pruner._sample_masks()["ffn"]
    assert bool(((sample == 0) | (sample == 1)).all())
    with pytest.raises(PruningConfigError, match="generator_masks"):
        lp.ATPConfig(generator_masks="relaxed")


def test_generator_mode_on_heads_equals_masking_the_merged_value_path():
    """Masking a KV group's o_proj inputs equals masking that group's merged ``(W_v + B A)x`` rows."""
    model, pruner, atp = attach_atp()
    spread_generator(pruner, seed=1)
    model.eval()
    ids = batch()["input_ids"]
    with atp.mode("generator"), torch.no_grad():
        torch.manual_seed(0)
        gated = model(input_ids=ids).logits
        m = {k: pruner.mask(k).clone() for k in ("heads", "ffn")}
    assert 0 < int(m["heads"].sum()) < m["heads"].numel()
    # reference: no pruner masks; apply the same decisions by hand on v_proj's merged output and down_proj input
    pruner.set_phase("dense")
    hooks = []
    for l, lyr in enumerate(pruner.adapter.layers):
        hv = m["heads"][l].repeat_interleave(HD)
        hooks.append(lyr.self_attn.v_proj.register_forward_hook(lambda mod, a, out, hv=hv: out * hv))
        hf = m["ffn"][l]
        hooks.append(lyr.mlp.down_proj.register_forward_pre_hook(lambda mod, a, hf=hf: (a[0] * hf,)))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    assert max_diff(gated, reference) < 1e-5


def test_gradients_reach_only_the_mode_s_parameters():
    model, pruner, atp = attach_atp()
    spread_generator(pruner)
    model.train()
    generator = pruner.gate_parameters()
    with atp.mode("generator"):
        loss = model(**batch()).loss + pruner.penalty()
        loss.backward()
    assert all(p.grad is None for p in lora_params(model))
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in generator)
    assert all(p.requires_grad for p in lora_params(model))  # restored on leaving the mode
    for p in generator:
        p.grad = None
    with atp.mode("lora"):
        loss = model(**batch()).loss + pruner.penalty()
        loss.backward()
    assert all(p.grad is None for p in generator)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lora_params(model))


# -- budget, freeze, group lasso, export ------------------------------------------------------------------------
def test_kept_fraction_uses_the_exact_cost_model():
    model, pruner, atp = attach_atp()
    spread_generator(pruner)
    masks = pruner.deterministic_masks()
    dense = L * (2 * NH * HD * D + 2 * NKV * HD * D + 3 * FFN * D)  # q, o; k, v; gate, up, down (no biases)
    kept = 0
    for l in range(L):
        g, c = int(masks["heads"][l].sum()), int(masks["ffn"][l].sum())
        kept += 2 * g * REP * HD * D + 2 * g * HD * D + 3 * c * D  # o_proj / down_proj input columns counted
    assert atp.kept_fraction() == pytest.approx(kept / dense, abs=1e-9)
    ratio = pruner.state.regularizer.ratio_loss(pruner, masks)
    assert float(ratio) == pytest.approx(abs(torch.log(torch.tensor(kept / dense)) - torch.log(torch.tensor(0.5))))


def run_atp(atp, model, steps: int, lr: float = 1e-3):
    lora_opt, gen_opt = atp.optimizers(lr=lr)
    model.train()
    for i in range(steps):
        atp.generator_step(batch(i % 3), gen_opt)
        atp.lora_step(batch(10 + i % 3), lora_opt)
    return lora_opt, gen_opt


@pytest.mark.parametrize(
    "target, budget_on, tolerance", [(0.3, "decisions", 0.02), (0.5, "decisions", 0.02), (0.5, "samples", 0.05)]
)
def test_budget_loss_reaches_target_then_decisions_freeze(target, budget_on, tolerance):
    torch.manual_seed(0)
    model, pruner, atp = attach_atp(target_sparsity=target, control_steps=50, gate_lr=1e-2, budget_on=budget_on)
    assert atp.kept_fraction() == 1.0
    lora_opt, gen_opt = run_atp(atp, model, 50)
    assert atp.frozen and atp.generator_steps == 50
    assert abs(atp.kept_fraction() - (1.0 - target)) <= tolerance
    masks = {k: v.clone() for k, v in pruner.deterministic_masks().items()}
    weights = [p.detach().clone() for p in pruner.gate_parameters()]
    for i in range(5):
        assert atp.generator_step(batch(i), gen_opt) is None  # frozen: nothing happens
        atp.lora_step(batch(i), lora_opt)
    assert all(torch.equal(a, b) for a, b in zip(weights, pruner.gate_parameters()))
    assert all(torch.equal(masks[k], v) for k, v in pruner.deterministic_masks().items())
    with pytest.raises(AttachStateError, match="frozen"):
        atp.set_mode("generator")


def test_decisions_freeze_on_a_budget_plateau():
    model, pruner, atp = attach_atp(control_steps=1000, plateau_tolerance=10.0, plateau_steps=3)
    run_atp(atp, model, 2)
    assert not atp.frozen
    run_atp(atp, model, 1)
    assert atp.frozen and atp.generator_steps == 3


def test_proximal_step_is_group_soft_thresholding():
    model, pruner, atp = attach_atp()
    spread_generator(pruner)
    reg, masks = pruner.state.regularizer, pruner.deterministic_masks()
    up = pruner.adapter.layers[0].mlp.up_proj
    pruned = (masks["ffn"][0] == 0).nonzero().flatten()
    before = up.lora_B["default"].weight[pruned].detach().norm(dim=1)
    threshold = float(before.min()) / 2
    reg.proximal_(masks, threshold)
    after = up.lora_B["default"].weight[pruned].detach().norm(dim=1)
    assert torch.allclose(after, before - threshold, atol=1e-6)
    kept = (masks["ffn"][0] == 1).nonzero().flatten()
    assert up.lora_B["default"].weight[kept].norm(dim=1).min() > 0  # kept rows untouched
    assert atp.zero_pruned_lora_() > 0 and atp.pruned_lora_norm() == 0.0


def lora_mode_logits(atp, model, ids):
    model.eval()
    with atp.mode("lora"), torch.no_grad():
        return model(input_ids=ids).logits


def test_group_lasso_zeroes_pruned_lora_then_export_matches_the_lora_forward():
    torch.manual_seed(0)
    model, pruner, atp = attach_atp(control_steps=30, gate_lr=1e-2)
    lora_opt, _ = run_atp(atp, model, 30)
    assert atp.frozen
    ids = batch(99)["input_ids"]
    compact = pruner.export()
    # at the freeze the pruned units' LoRA rows are alive: the model LoRA trains is not the one exported
    assert atp.pruned_lora_norm() > 1e-2
    assert max_diff(lora_mode_logits(atp, model, ids), compact(input_ids=ids).logits) > 1e-3
    model.train()
    zeroed = [atp.lora_step(batch(i), lora_opt)["zeroed_groups"] for i in range(15)]
    assert atp.pruned_lora_norm() == 0.0 and zeroed[-1] > 0  # exactly zero, not just small
    compact = pruner.export()  # checks compact == gated eval model (merged path) itself
    reference = lora_mode_logits(atp, model, ids)
    diff = max_diff(reference, compact(input_ids=ids).logits)
    assert diff <= 1e-5 * float(reference.abs().max())
    # float32 report vs float64 fraction; one unit here is >= 2e-3 of the prunable parameters
    assert pruner.last_report.exact_sparsity == pytest.approx(1.0 - atp.kept_fraction(), abs=1e-6)


def test_control_phase_state_resumes_from_the_state_dict():
    torch.manual_seed(0)
    model, pruner, atp = attach_atp(control_steps=4, gate_lr=1e-2)
    run_atp(atp, model, 4)
    state = {k: v for k, v in model.state_dict().items() if "pruning_gates" in k}
    assert any(k.endswith("regularizer.frozen") for k in state)
    model2, pruner2, atp2 = attach_atp(control_steps=4, gate_lr=1e-2)
    model2.load_state_dict(state, strict=False)
    assert atp2.frozen and atp2.generator_steps == 4
    assert all(
        torch.equal(a, b) for a, b in zip(pruner.deterministic_masks().values(), pruner2.deterministic_masks().values())
    )


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"structures": ("heads", "hidden")}, r"ATP prunes \['heads', 'ffn', 'qk_dims', 'v_dims'\].*'hidden'"),
        ({"keep_units": {"ffn": 8}}, "keep_units"),
        ({"warmup_steps": 10}, "warm-up"),
        ({"control_steps": 0}, "control_steps"),
        ({"temperature": 0.0}, "temperature"),
        ({"group_lasso_final": -1.0}, "group_lasso_final"),
        ({"budget_on": "eval"}, "budget_on"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(PruningConfigError, match=match):
        lp.ATPConfig(**kwargs)


def test_controller_and_mode_errors():
    model = with_lora(tiny_causal_lm("llama"))
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3))
    with pytest.raises(PruningConfigError, match="ATPController needs a pruner attached with ATPConfig"):
        ATPController(pruner)
    _, _, atp = attach_atp()
    with pytest.raises(PruningConfigError, match="mode.*'generator', 'lora'.*'joint'"):
        atp.set_mode("joint")


def test_unsupported_family_names_the_fix():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(PruningConfigError, match="register_atp_layout"):
        lp.attach(model, lp.ATPConfig(target_sparsity=0.2))


# -- Lightning (manual optimization, as documented in methods/atp/controller.py) ----------------------------------
def test_lightning_manual_optimization_recipe():
    import lightning as L

    class ATPModule(L.LightningModule):
        def __init__(self, model, config):
            super().__init__()
            self.automatic_optimization = False
            self.model = model
            self.pruner = lp.attach(model, config)
            self.atp = ATPController(self.pruner)

        def configure_optimizers(self):
            return list(self.atp.optimizers(lr=1e-3))

        def training_step(self, batch, batch_idx):
            lora_opt, gen_opt = self.optimizers()
            train_ids, held_out_ids = batch
            if not self.atp.frozen:
                with self.atp.mode("generator"):
                    loss = self.model(input_ids=held_out_ids, labels=held_out_ids).loss + self.pruner.penalty()
                gen_opt.zero_grad()
                self.manual_backward(loss)
                gen_opt.step()
                self.atp.record_generator_step()
            with self.atp.mode("lora"):
                loss = self.model(input_ids=train_ids, labels=train_ids).loss + self.pruner.penalty()
            lora_opt.zero_grad()
            self.manual_backward(loss)
            lora_opt.step()
            self.atp.after_lora_step(lora_opt)

    torch.manual_seed(0)
    model = with_lora(tiny_causal_lm("llama")).train()
    module = ATPModule(model, lp.ATPConfig(target_sparsity=0.5, control_steps=14, gate_lr=1e-2))
    ids = torch.randint(0, 128, (2, 8, 16), generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(ids[0], ids[1])
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=10,  # 2 batches per epoch: 14 control batches, then 6 LoRA-only ones
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    atp = module.atp
    assert atp.frozen and atp.generator_steps == 14
    assert abs(atp.kept_fraction() - 0.5) <= 0.05
    assert atp.pruned_lora_norm() == 0.0  # 6 frozen-phase steps with the proximal step
    module.pruner.export()


def test_without_lora_and_detach_removes_every_hook():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.ATPConfig(target_sparsity=0.3, control_steps=3))
    atp = ATPController(pruner)
    spread_generator(pruner)
    whole_model = {id(p) for n, p in model.named_parameters() if not n.startswith("pruning_gates")}
    assert {id(p) for p in atp.lora_parameters()} == whole_model  # no LoRA: the "LoRA" step tunes the model
    ids = batch()["input_ids"]
    model.eval()
    with atp.mode("lora"), torch.no_grad():
        frozen = model(input_ids=ids).logits  # no LoRA: masking W x is masking the whole output
    compact = pruner.export()
    assert max_diff(frozen, compact(input_ids=ids).logits) <= 1e-5 * float(frozen.abs().max())
    up = model.model.layers[0].mlp.up_proj
    assert len(up._forward_hooks) == 1
    pruner.detach()
    assert len(up._forward_hooks) == 0 and len(model.model.layers[0].mlp.down_proj._forward_pre_hooks) == 0


def test_pruning_callback_trains_generator_and_model_jointly():
    """Without the controller (automatic optimization), ATP runs as joint training on the merged path."""
    from lightning_helpers import lit_llama, loader, trainer

    torch.manual_seed(0)
    module = lit_llama()
    callback = lp.PruningCallback(lp.ATPConfig(target_sparsity=0.5, gate_lr=1e-2), log_stats=False)
    trainer(40, [callback]).fit(module, loader(16, 4))
    pruner = callback.pruner
    assert pruner.state.regularizer.mode == "generator" and pruner.mask_path == "merged"
    assert abs(pruner.stats()["exact_sparsity"] - 0.5) <= 0.05
    pruner.export()
