"""Half precision: gates and Lagrange multipliers stay fp32 in bf16/fp16 training, and a half-precision model
exports through the equivalence check at its documented tolerance (``export/verify.py``: 2e-2 for bf16, 5e-3 for
fp16, relative to the largest output)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.export.verify import HALF_PRECISION_RTOL

HALF = [torch.bfloat16, torch.float16]


def test_bf16_training_keeps_gates_and_multipliers_fp32():
    """A model cast to bf16 (pure bf16 training; fp16 needs autocast + a grad scaler, below)."""
    dtype = torch.bfloat16
    model = with_lora(tiny_causal_lm("llama"))
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn", "hidden")))
    model.to(dtype)
    assert all(p.dtype == torch.float32 for p in pruner.state.parameters())
    assert all(p.dtype == torch.float32 for p in pruner.multiplier_parameters())
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    pruner.hook_optimizer(opt)
    before = {k: v.detach().clone() for k, v in pruner.state.named_parameters()}
    model.train()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss.float() + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        assert all(
            p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
            for p in pruner.state.parameters()
        )
        opt.step()
    after = dict(pruner.state.named_parameters())
    assert all(after[k].dtype == torch.float32 for k in after)
    assert any(not torch.equal(before[k], after[k].detach()) for k in before), "the gates should have been updated"


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_autocast_mixed_precision_updates_fp32_gates(dtype):
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn", "hidden")))
    opt = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    pruner.hook_optimizer(opt)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    before = [p.detach().clone() for p in pruner.gate_parameters()]
    model.train()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with torch.autocast("cpu", dtype=dtype):
            loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
        opt.zero_grad()
        scaler.scale(loss).backward()
        grads = [p.grad for p in pruner.gate_parameters()]
        assert all(g is not None and g.dtype == torch.float32 for g in grads)
        scaler.step(opt)
        scaler.update()
    after = pruner.gate_parameters()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a.detach()) for b, a in zip(before, after)), "the gates should have been updated"


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_half_precision_export_passes_the_check_at_its_documented_tolerance(dtype, lora):
    model = tiny_causal_lm("llama")
    model = with_lora(model) if lora else model
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("heads", "ffn", "hidden")))
    randomize_gates(pruner, seed=3)
    model.to(dtype)
    compact = pruner.export()
    report = pruner.last_report
    assert report.params_after < report.params_before
    assert next(compact.parameters()).dtype == dtype
    assert report.max_abs_diff <= HALF_PRECISION_RTOL[dtype] * report.reference_scale
    # an independent comparison on other inputs, in the model's precision
    ids = torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(7))
    pruner.hf_model.eval()
    with torch.no_grad():
        a = pruner.hf_model(input_ids=ids).logits.float()
        b = compact(input_ids=ids).logits.float()
    assert float((a - b).abs().max()) <= HALF_PRECISION_RTOL[dtype] * float(a.abs().max())


def test_half_precision_export_still_refuses_a_wrong_model():
    """The looser half-precision tolerance must not let a genuinely different model through."""
    model = tiny_causal_lm("llama").to(torch.bfloat16)
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.0, structures=("ffn",)))
    randomize_gates(pruner, seed=1)
    original = pruner.adapter.build_compact

    def corrupt(state, masks):
        compact, info = original(state, masks)
        with torch.no_grad():
            compact.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        return compact, info

    pruner.adapter.build_compact = corrupt
    with pytest.raises(lp.errors.ExportMismatchError, match="does not compute what the gated model computed"):
        pruner.export()
