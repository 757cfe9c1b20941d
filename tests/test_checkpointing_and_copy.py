"""Gradient checkpointing and copies of a gated model: two things fine-tuning code does to a model behind the
library's back.

Checkpointing recomputes each block's forward during backward; everything the hooks derive from the masks must
be computed *outside* the blocks (once per forward, at the root pre-hook) or the recomputation runs different
ops and torch refuses. A deep copy (EMA weights, some trainers' model snapshots) must not trip over this
forward's masks, which are non-leaf tensors.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp

ALL = ("heads", "ffn", "hidden", "attn_block", "mlp_block")


def _gated(family: str, structures, checkpointing: bool):
    model = with_lora(tiny_causal_lm(family))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=structures))
    pruner.sample_seed = 1234  # the same mask samples in both runs
    return model.train(), pruner


def _grads(model, pruner) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize(
    "structures", [("hidden",), ALL, ("qk_dims", "v_dims", "hidden")], ids=["hidden", "all", "head-dims"]
)
def test_gradient_checkpointing_gives_the_gradients_of_a_plain_run(family, structures):
    plain = _grads(*_gated(family, structures, checkpointing=False))
    checkpointed = _grads(*_gated(family, structures, checkpointing=True))
    assert plain.keys() == checkpointed.keys()
    assert any("pruning_gates" in n for n in plain), "the gates must receive gradients"
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


CONFIGS = {
    "l0-all": lambda: lp.L0Config(target_sparsity=0.3, structures=ALL),
    "l0-distill": lambda: lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn", "hidden"), distill_weight=1.0),
    "pat": lambda: lp.PATConfig(target_hidden_size=48, total_steps=10, hsm_rank=4),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_deepcopy_after_a_training_step_gives_an_independent_gated_model(config):
    model = with_lora(tiny_causal_lm("llama")).train()
    pruner = lp.attach(model, CONFIGS[config]())
    _grads(model, pruner)  # this forward's masks are non-leaf tensors held by the pruner
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=ids).logits, model(input_ids=ids).logits)
        twin_gate = next(p for n, p in twin.named_parameters() if "pruning_gates" in n)
        twin_gate.fill_(-10.0)  # prune everything the copy's first gate controls
        changed = twin(input_ids=ids).logits
        original = model(input_ids=ids).logits
    assert not torch.allclose(changed, original), "the copy's hooks must read the copy's gates"
    assert all(p.min() > -10.0 for n, p in model.named_parameters() if "pruning_gates" in n and p.numel())
