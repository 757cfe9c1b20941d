"""Self-distillation from the ungated model on the same weights (``distill_weight`` on every method's config):
the teacher equals the base model without adapters and gates, no gradient reaches it, no parameter memory is
added, nothing runs when it is off, it works through PruningCallback / PruningTrainer untouched, and it lowers
the compact model's held-out loss on a task where pruning hurts."""

from __future__ import annotations

import copy
import gc
import json
import math

import pytest
import torch
from conftest import randomize_gates, tiny_causal_lm, tiny_config, with_lora

import lightning_prune as lp
from lightning_prune.distill import hidden_distillation, kl_distillation
from lightning_prune.errors import PruningConfigError
from lightning_prune.methods import available_methods, method_config_class

IDS = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))


class Calls:
    """Outputs of every call of a module (the teacher call is nested inside the student's, so it comes first)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.outputs: list = []
        self.handle = module.register_forward_hook(lambda m, a, o: self.outputs.append(o))


def gated_lora_llama(structures=("heads", "ffn", "hidden"), **config):
    model = with_lora(tiny_causal_lm("llama")).train()
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=structures, **config))
    randomize_gates(pruner, std=2.0)
    return model, pruner


# -- configuration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("distill_weight", -0.1, "`distill_weight` must be a non-negative number"),
        ("distill_weight", math.nan, "`distill_weight` must be a non-negative number"),
        ("distill_weight", True, "`distill_weight` must be a non-negative number"),
        ("distill_hidden_weight", -1.0, "`distill_hidden_weight` must be a non-negative number"),
        ("distill_temperature", 0.0, "`distill_temperature` must be a positive number"),
        ("distill_temperature", -2.0, "`distill_temperature` must be a positive number"),
    ],
)
def test_bad_distill_settings_fail_early(field, value, message):
    with pytest.raises(PruningConfigError, match=message):
        lp.L0Config(**{field: value})


def test_config_round_trips_through_to_dict():
    config = lp.L0Config(distill_weight=0.5, distill_temperature=3.0, distill_hidden_weight=0.2)
    values = config.to_dict()
    assert (values["distill_weight"], values["distill_temperature"], values["distill_hidden_weight"]) == (0.5, 3.0, 0.2)
    values.pop("method")
    assert lp.L0Config(**values) == config


def test_cli_parses_the_distill_options():
    from jsonargparse import ArgumentParser

    from lightning_prune.cli import _enable_config_subclasses

    _enable_config_subclasses()
    parser = ArgumentParser()
    parser.add_argument("--config", type=lp.PruningConfig)
    given = {"class_path": "lightning_prune.L0Config", "init_args": {"distill_weight": 0.1, "distill_temperature": 2}}
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    config = instantiate(parser.parse_args(["--config", json.dumps(given)])).config
    assert isinstance(config, lp.L0Config) and (config.distill_weight, config.distill_temperature) == (0.1, 2.0)


def test_model_without_logits_is_refused():
    from transformers import LlamaModel

    backbone = LlamaModel(tiny_config("llama"))
    with pytest.raises(PruningConfigError, match="no logits"):
        lp.attach(backbone, lp.L0Config(distill_weight=1.0))
    assert not hasattr(backbone, "pruning_gates")  # refused before anything was attached

    model = tiny_causal_lm("llama").train()  # a head, but called without return_dict: a tuple has no `.logits`
    lp.attach(model, lp.L0Config(distill_weight=1.0))
    with pytest.raises(PruningConfigError, match="return_dict=True"):
        model(input_ids=IDS, return_dict=False)


def test_a_head_trained_through_modules_to_save_is_flagged():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm("llama"), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    with pytest.warns(UserWarning, match="`modules_to_save`.*untrained copy in the teacher"):
        lp.attach(model, lp.L0Config(distill_weight=1.0))


def test_forward_that_skips_the_hooks_is_reported():
    model = tiny_causal_lm("llama").train()
    pruner = lp.attach(model, lp.L0Config(distill_weight=1.0))
    model.forward(input_ids=IDS)  # `.forward` skips the model's hooks: no teacher pass could run
    with pytest.raises(PruningConfigError, match=r"did not go through LlamaForCausalLM.__call__"):
        pruner.penalty()
    model(input_ids=IDS)  # the next, ordinary step distils again
    assert float(pruner.penalty().detach()) > 0 and pruner.distiller.teacher_forwards == 1


# -- off means off --------------------------------------------------------------------------------------------
def test_no_teacher_forward_when_off_or_outside_the_prune_phase():
    model = tiny_causal_lm("llama").train()
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn")))
    calls = Calls(model)
    (model(input_ids=IDS, labels=IDS).loss + pruner.penalty()).backward()
    assert pruner.distiller is None and len(calls.outputs) == 1 and "distill" not in pruner.last_terms

    model = tiny_causal_lm("llama").train()
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), distill_weight=1.0))
    calls = Calls(model)
    (model(input_ids=IDS, labels=IDS).loss + pruner.penalty()).backward()
    assert len(calls.outputs) == 2 and pruner.distiller.teacher_forwards == 1 and pruner.last_terms["distill"] > 0
    with torch.no_grad():  # a training-mode forward without gradients (e.g. logging) does not distil
        model(input_ids=IDS)
    model.eval()
    model(input_ids=IDS)
    model.train()
    for phase in ("dense", "frozen"):
        pruner.set_phase(phase)
        model(input_ids=IDS)
        assert pruner.distiller.pop_terms() == {}
    assert pruner.distiller.teacher_forwards == 1 and len(calls.outputs) == 6


# -- the teacher -----------------------------------------------------------------------------------------------
def test_teacher_is_the_base_model_and_gradients_skip_it():
    temperature, weight = 2.0, 0.7
    model, pruner = gated_lora_llama(distill_weight=weight, distill_temperature=temperature)
    lora_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    calls = Calls(pruner.hf_model)
    masks_seen = []
    pruner.adapter.root_module().register_forward_pre_hook(lambda m, a: masks_seen.append(pruner._masks))
    model(input_ids=IDS)
    teacher, student = calls.outputs[0].logits, calls.outputs[1].logits

    base = tiny_causal_lm("llama").eval()  # the same seeded weights, never wrapped or gated
    with torch.no_grad():
        reference = base(input_ids=IDS).logits
    assert (teacher - reference).abs().max().item() <= 1e-6
    assert (student - reference).abs().max().item() > 1e-2  # adapters and gates are active in the student
    assert teacher.grad_fn is None and not teacher.requires_grad and student.requires_grad

    # afterwards everything is as before the teacher pass: adapters on, flags, modes, the student's masks
    assert {n: p.requires_grad for n, p in model.named_parameters()} == lora_flags
    assert all(m.training for m in model.modules())
    assert not any(getattr(m, "disable_adapters", None) is True for m in model.modules())
    assert masks_seen[0] is not None and pruner._masks is masks_seen[0]  # gradient checkpointing recomputes with it

    # the stored term and its gradient are those of KL(base ‖ student) with a constant teacher
    term = pruner.distiller.pop_terms()["distill"]
    expected = weight * kl_distillation(student, reference, temperature)
    assert torch.allclose(term, expected, rtol=1e-5, atol=1e-7)
    params = [p for n, p in model.named_parameters() if "lora_" in n] + pruner.gate_parameters()
    got = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in got)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


#: Arguments a method needs beyond its defaults on the tiny Llama (every registered method is tested).
METHOD_ARGS = {"pat": dict(target_hidden_size=32, hsm_rank=8)}


@pytest.mark.parametrize("method", available_methods())
def test_every_method_distils_from_the_model_before_attach(method):
    """Whatever a method adds (gates, ATP's generator and frozen-path masks, PAT's HSMs), the teacher is the
    model as it was before ``attach`` without its adapters."""
    model = with_lora(tiny_causal_lm("llama")).train()
    config = method_config_class(method)(distill_weight=0.5, **METHOD_ARGS.get(method, {}))
    pruner = lp.attach(model, config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every gate / method module away from its initial (often identity) value
        for p in pruner.state.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    calls = Calls(pruner.hf_model)
    (model(input_ids=IDS, labels=IDS).loss + pruner.penalty()).backward()
    with torch.no_grad():
        reference = tiny_causal_lm("llama").eval()(input_ids=IDS).logits
    assert len(calls.outputs) == 2 and pruner.last_terms["distill"] > 0
    assert (calls.outputs[0].logits - reference).abs().max().item() <= 1e-6
    assert (calls.outputs[1].logits - reference).abs().max().item() > 1e-2


def tiny_family(family: str, seed: int = 0) -> torch.nn.Module:
    """A BERT classifier or a GPT-2 LM with their default dropout (0.1): the teacher must run without it."""
    import transformers

    torch.manual_seed(seed)
    if family == "bert":
        config = transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=128,
            max_position_embeddings=64, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config).float()
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=96, vocab_size=128, n_positions=64)
    return transformers.GPT2LMHeadModel(config).float()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_other_families_distil_from_the_ungated_model_in_eval_mode(family):
    model = tiny_family(family).train()
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn", "hidden"), distill_weight=1.0))
    randomize_gates(pruner, std=2.0)
    mask = torch.ones_like(IDS)
    mask[1, 5:] = 0  # a padded row
    calls = Calls(model)
    labels = torch.tensor([0, 2]) if family == "bert" else IDS
    (model(input_ids=IDS, attention_mask=mask, labels=labels).loss + pruner.penalty()).backward()
    with torch.no_grad():
        reference = tiny_family(family).eval()(input_ids=IDS, attention_mask=mask).logits
    assert (calls.outputs[0].logits - reference).abs().max().item() <= 1e-6  # no gates, no dropout
    assert (calls.outputs[1].logits - reference).abs().max().item() > 1e-2
    assert pruner.last_terms["distill"] > 0 and all(m.training for m in model.modules())
    weight = mask if family == "gpt2" else None  # per-token logits skip padded positions; a classifier has none
    expected = kl_distillation(calls.outputs[1].logits, reference, 2.0, weight)
    assert pruner.last_terms["distill_kl"] == pytest.approx(float(expected), rel=1e-5)
    if weight is not None:
        assert float(kl_distillation(calls.outputs[1].logits, reference, 2.0)) != pytest.approx(float(expected))


def test_gradient_checkpointing_recomputes_the_student_with_its_own_masks():
    grads = []
    for checkpointing in (False, True):
        model = tiny_causal_lm("llama").train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # (not `hidden`: its cached norm scale makes checkpointing's recomputation differ, with or without distill)
        pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), distill_weight=1.0))
        randomize_gates(pruner, std=1.0)
        pruner.sample_seed = 7  # the same sampled (soft) masks in both runs
        (model(input_ids=IDS, labels=IDS).loss + pruner.penalty()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6) for n in grads[0])


def test_kl_and_hidden_terms_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    T = 2.0
    p_t, p_s = torch.softmax(teacher / T, -1), torch.softmax(student / T, -1)
    rows = (p_t * (p_t.log() - p_s.log())).sum(-1)
    assert torch.allclose(kl_distillation(student, teacher, T), T * T * rows.mean())
    assert torch.allclose(kl_distillation(student, teacher, T, torch.tensor([1.0, 0.0])), T * T * rows[0])
    assert float(kl_distillation(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-7)

    hs = torch.zeros(1, 2, 4)
    ht = torch.tensor([[[1.0, 2.0, 0.0, 5.0], [0.0, 0.0, 3.0, 7.0]]])
    kept = torch.tensor([1.0, 1.0, 1.0, 0.0])  # dim 3 is pruned in the student: its mismatch does not count
    assert float(hidden_distillation((hs,), (ht,), kept)) == pytest.approx(((1 + 4) / 3 + 9 / 3) / 2)
    assert float(hidden_distillation((hs,), (ht,))) == pytest.approx(((1 + 4 + 25) / 4 + (9 + 49) / 4) / 2)


def test_hidden_matching_runs_over_kept_dims():
    model, pruner = gated_lora_llama(distill_weight=1.0, distill_hidden_weight=0.5)
    calls = Calls(pruner.hf_model)
    out = model(input_ids=IDS, labels=IDS)
    assert out.hidden_states is not None and calls.outputs[0].hidden_states is not None
    kept = (pruner.mask("hidden")[0] > 0).float()
    assert 0 < kept.sum() < kept.numel()  # the randomized gates prune some hidden dims
    student, teacher = calls.outputs[1], calls.outputs[0]
    expected_hidden = hidden_distillation(student.hidden_states[1:], teacher.hidden_states[1:], kept)
    total = out.loss + pruner.penalty()
    total.backward()
    assert pruner.last_terms["distill_hidden"] == pytest.approx(float(expected_hidden), rel=1e-5)
    expected = pruner.last_terms["distill_kl"] + 0.5 * pruner.last_terms["distill_hidden"]
    assert pruner.last_terms["distill"] == pytest.approx(expected, rel=1e-5)


# -- memory ------------------------------------------------------------------------------------------------------
def live_parameters() -> dict[int, int]:
    gc.collect()
    return {id(o): o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.nn.Parameter)}


def test_teacher_uses_no_extra_parameter_memory():
    base = tiny_causal_lm("llama")
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    start = live_parameters()
    teacher = copy.deepcopy(base)  # the alternative this replaces: a second copy of the weights
    copied = sum(live_parameters().values()) - sum(start.values())
    del teacher
    assert copied == base_bytes

    model = with_lora(base).train()
    before = live_parameters()
    storages = {(p.data_ptr(), p.numel() * p.element_size()) for p in model.parameters()}
    pruner = lp.attach(model, lp.L0Config(structures=("heads", "ffn"), distill_weight=1.0))
    optimizer = torch.optim.SGD(pruner.param_groups(lr=1e-3), lr=1e-3)
    for _ in range(2):
        (model(input_ids=IDS, labels=IDS).loss + pruner.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = live_parameters()
    assert pruner.distiller.teacher_forwards == 2
    own = {id(p): p.numel() * p.element_size() for p in pruner.state.parameters()}
    # the only parameters created by attach + two distilled steps are the gates and multipliers
    assert set(after) - set(before) == set(own) and set(before) <= set(after)
    assert sum(after.values()) - sum(before.values()) == sum(own.values()) < base_bytes / 100
    model_storages = {(p.data_ptr(), p.numel() * p.element_size()) for p in model.parameters() if id(p) not in own}
    assert model_storages == storages  # the teacher ran on the student's weights, in place


# -- integrations -------------------------------------------------------------------------------------------------
def test_lightning_callback_distils_an_unchanged_module(tmp_path):
    import csv

    import lightning as L
    from lightning_helpers import LitLM, config, loader, trainer

    L.seed_everything(0, verbose=False)
    module = LitLM(with_lora(tiny_causal_lm("llama")).train())
    callback = lp.PruningCallback(config(distill_weight=0.5), dense_steps=2)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="logs")
    trainer(6, [callback], logger=logger, log_every_n_steps=1).fit(module, loader())
    pruner = callback.pruner
    assert pruner.distiller.teacher_forwards == 4  # the prune-phase steps only, none in the dense warm-up
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("pruning/distill")]
    assert len(rows) == 4 and all(float(r["pruning/distill"]) > 0 for r in rows)
    assert all(float(r["pruning/distill_kl"]) * 0.5 == pytest.approx(float(r["pruning/distill"])) for r in rows)


def test_hf_trainer_distils(tmp_path):
    import transformers

    from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": IDS[i % 2], "labels": IDS[i % 2]}

    callback = PruningTrainerCallback(lp.L0Config(structures=("heads", "ffn"), distill_weight=0.5))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = PruningTrainer(
        model=with_lora(tiny_causal_lm("llama")).train(), args=args, train_dataset=Tokens(), callbacks=[callback]
    )
    trainer.train()
    assert trainer.pruner.distiller.teacher_forwards == 3
    logged = [h for h in trainer.state.log_history if "pruning/distill" in h]
    assert len(logged) == 3 and all(h["pruning/distill"] > 0 for h in logged)


# -- the point of it -------------------------------------------------------------------------------------------
def test_distillation_lowers_the_compact_models_heldout_loss():
    from distill_task import chain, pretrain, prune_once, sample

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only spins on a busy machine
    try:
        table = chain()
        train, test = sample(table, 2048, seed=1), sample(table, 256, seed=2)
        state = pretrain(train, steps=400)  # the "pretrained" model: the teacher under LoRA
        results = {
            seed: (prune_once(state, train[:256], test, 0.0, seed), prune_once(state, train[:256], test, 1.0, seed))
            for seed in (0, 1)
        }
    finally:
        torch.set_num_threads(threads)
    for (plain, plain_sparsity), (distilled, distilled_sparsity) in results.values():
        assert plain_sparsity >= 0.5 and distilled_sparsity >= 0.5  # both compact models are the size asked for
        assert distilled < plain - 0.02  # the same seed, data and steps: only the teacher term differs
