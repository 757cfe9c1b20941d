"""`distill_teacher="prune_start"`: the trainable weights as the prune phase began teach the gated model."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.distill import kl_distillation
from lightning_prune.errors import PruningConfigError

IDS = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))


def _outputs(module: torch.nn.Module) -> list:
    seen: list = []
    module.register_forward_hook(lambda m, a, o: seen.append(o))
    return seen


def _nudge(params, scale: float, seed: int) -> None:
    """What an optimizer step does: move every trainable weight."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def _ungated_logits(model, pruner) -> torch.Tensor:
    """The model's logits with gates off (dense phase) and adapters as they are, in eval mode."""
    phase = pruner.phase
    pruner.set_phase("dense")
    model.eval()
    with torch.no_grad():
        logits = pruner.hf_model(input_ids=IDS).logits
    model.train()
    pruner.set_phase(phase)
    return logits


def test_unknown_teacher_is_refused_with_the_choices():
    with pytest.raises(PruningConfigError, match="`distill_teacher` must be one of .*'ungated', 'prune_start'"):
        lp.L0Config(distill_weight=0.5, distill_teacher="dense")


def test_teacher_round_trips_through_to_dict():
    config = lp.GradualConfig(distill_weight=0.5, distill_teacher="prune_start")
    assert lp.PruningConfig.from_dict(config.to_dict()).distill_teacher == "prune_start"
    assert lp.L0Config().distill_teacher == "ungated"


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full-fine-tune"])
def test_teacher_is_the_model_at_the_start_of_the_prune_phase(lora):
    model = (with_lora(tiny_causal_lm("llama")) if lora else tiny_causal_lm("llama")).train()
    config = lp.L0Config(
        target_sparsity=0.3, structures=("heads", "ffn"), distill_weight=0.7, distill_teacher="prune_start"
    )
    pruner = lp.attach(model, config)
    randomize_gates(pruner, std=2.0)
    trainable = pruner.param_groups(lr=1e-3)[0]["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(("lora_" in names[id(p)]) == lora for p in trainable)

    pruner.set_phase("dense")  # the dense phase moves the weights (LoRA B starts at 0: the adapters learn)
    _nudge(trainable, 0.05, seed=1)
    pruner.set_phase("prune")
    at_prune_start = _ungated_logits(model, pruner)
    pretrained = tiny_causal_lm("llama").eval()(input_ids=IDS).logits.detach()
    assert (at_prune_start - pretrained).abs().max() > 1e-2  # the teacher is not the pretrained model

    outputs = _outputs(pruner.hf_model)
    model(input_ids=IDS)
    assert (outputs[0].logits - at_prune_start).abs().max() <= 1e-5
    pruner.distiller.pop_terms()

    live = [p.data_ptr() for p in trainable]
    _nudge(trainable, 0.05, seed=2)  # prune-phase steps move the weights; the teacher stays where it was
    now = _ungated_logits(model, pruner)
    model(input_ids=IDS)
    teacher, student = outputs[3].logits, outputs[4].logits  # outputs[2]: the check above
    assert (teacher - at_prune_start).abs().max() <= 1e-5
    assert (now - at_prune_start).abs().max() > 1e-2
    assert [p.data_ptr() for p in trainable] == live  # the live weights are back in place

    # the term and its gradient are those of KL(teacher at prune start ‖ student), flowing into the live weights
    term = pruner.distiller.pop_terms()["distill"]
    expected = 0.7 * kl_distillation(student, at_prune_start, config.distill_temperature)
    assert torch.allclose(term, expected, rtol=1e-4, atol=1e-6)
    got = torch.autograd.grad(term, trainable, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, trainable, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert torch.allclose(g, w, rtol=1e-3, atol=1e-6)


def test_snapshot_copies_only_the_trainable_weights(caplog):
    model = with_lora(tiny_causal_lm("llama")).train()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, distill_weight=0.5, distill_teacher="prune_start"))
    with caplog.at_level(logging.INFO, logger="lightning_prune"):
        model(input_ids=IDS)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(t.numel() for _, t in pruner.distiller._snapshot) == lora
    assert f"{lora:,} parameters copied" in caplog.text and "WARNING" not in caplog.text


def test_a_snapshot_taken_after_the_prune_phase_began_is_flagged(caplog):
    model = with_lora(tiny_causal_lm("llama")).train()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, distill_weight=0.5, distill_teacher="prune_start"))
    pruner.pruning_step = 7  # as after resuming mid-prune from a checkpoint
    with caplog.at_level(logging.INFO, logger="lightning_prune"):
        model(input_ids=IDS)
    assert "taken at prune step 7, not at the start of the prune phase" in caplog.text


def test_a_head_trained_through_modules_to_save_teaches_as_trained_in_the_dense_phase(recwarn):
    """With a new task head (peft ``modules_to_save``) the ungated teacher would use the untrained original head;
    the ``prune_start`` teacher uses the copy the dense phase trained, so no warning is due."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm("llama"), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    ).train()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, distill_weight=1.0, distill_teacher="prune_start"))
    assert not [w for w in recwarn if "modules_to_save" in str(w.message)]
    trained_head = next(m for m in model.modules() if hasattr(m, "original_module")).modules_to_save["default"]
    pruner.set_phase("dense")
    _nudge(trained_head.parameters(), 0.5, seed=4)  # the dense phase trains the new head
    pruner.set_phase("prune")
    at_prune_start = _ungated_logits(model, pruner)
    outputs = _outputs(pruner.hf_model)
    model(input_ids=IDS)
    assert (outputs[0].logits - at_prune_start).abs().max() <= 1e-5
