"""Attaching to a model built on the meta device (issue #13, part 3): the gates are real from the start, survive
``model.to_empty(device=...)``, a checkpoint load replaces them, and the materialised model trains and exports."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_causal_lm, tiny_config

import lightning_prune as lp

STRUCTURES = ("heads", "ffn", "hidden")


def meta_model():
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))


def load_weights(model, reference) -> None:
    """Load ``reference``'s weights into a materialised model; non-persistent buffers (rotary ``inv_freq``) are not
    in a state dict, so they are copied too (``from_pretrained`` recomputes them)."""
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pruning_gates.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for name, buf in reference.named_buffers():
            model.get_buffer(name).copy_(buf)


def test_attach_on_meta_gives_real_gates_that_survive_to_empty():
    model = meta_model()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=STRUCTURES))
    assert not any(t.is_meta for t in pruner.state.state_dict().values())
    before = {k: v.clone() for k, v in pruner.state.state_dict().items()}
    assert pruner.pruning_step == 0 and torch.isfinite(pruner.penalty())  # no "Tensor.item() on meta tensors"
    stats = pruner.stats()
    assert stats["exact_sparsity"] >= 0.3 - 1e-6
    model.to_empty(device="cpu")
    after = pruner.state.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert pruner.state.gates["ffn"].log_alpha.dtype == torch.float32


@pytest.mark.parametrize("load_gates", [False, True], ids=["fresh-gates", "gates-from-checkpoint"])
def test_materialised_model_trains_one_step_and_exports_what_it_computes(load_gates):
    reference = tiny_causal_lm("llama", seed=3)
    model = meta_model()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=STRUCTURES))
    model.to_empty(device="cpu")
    load_weights(model, reference)
    if load_gates:  # resume: a checkpoint's gates replace the attach-time ones
        trained = lp.attach(tiny_causal_lm("llama", seed=3), lp.L0Config(target_sparsity=0.3, structures=STRUCTURES))
        with torch.no_grad():
            for gate in trained.gates.values():
                gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=torch.Generator().manual_seed(1)))
        pruner.state.load_state_dict(trained.state.state_dict())
        assert torch.equal(pruner.gates["ffn"].log_alpha, trained.gates["ffn"].log_alpha)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    pruner.step()
    assert pruner.pruning_step == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    compact = pruner.export()  # checked: the compact model computes what the gated model computes
    assert pruner.last_report.exact_sparsity >= 0.3 - 1e-6
    with torch.no_grad():
        torch.testing.assert_close(compact(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_export_plan_on_the_meta_device_matches_the_real_export():
    """``build_compact`` on a meta model plans a 7B export without weights (benchmarks/scale.py): the same
    layer shapes and parameter count as the real export of the same gates."""
    from conftest import randomize_gates, tiny_config

    from lightning_prune.export.merge import MergedWeights
    from lightning_prune.pruner import STATE_ATTRIBUTE, _binary

    config = lp.L0Config(structures=("heads", "ffn", "hidden"), target_sparsity=0.4)
    real = lp.attach(tiny_causal_lm("llama"), config)
    randomize_gates(real, seed=4)
    with torch.device("meta"):
        meta_model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))
    planned = lp.attach(meta_model, config)
    planned.state.load_state_dict(real.state.state_dict())
    planned.config.match_target = real.config.match_target  # randomize_gates switches it off (a live field)
    masks = planned.deterministic_masks()
    assert all(torch.equal(masks[k], m) for k, m in real.deterministic_masks().items())
    compact, info = planned.config.build_compact(
        planned, MergedWeights(planned.model, skip_prefix=STATE_ATTRIBUTE), masks
    )
    assert all(p.is_meta for p in compact.parameters())
    exported = real.export()
    assert info["layer_shapes"] == real.last_report.layer_shapes
    assert sum(p.numel() for p in compact.parameters()) == sum(p.numel() for p in exported.parameters())
    assert sum(p.numel() for p in compact.parameters()) == int(round(float(planned.cost.total(_binary(masks))[0])))
