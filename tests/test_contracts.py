"""Training contracts hold or fail loudly (issue #14, class 3).

Tables of (case, input, expected error class, message regex): gates left out of the optimizer, an HF run resumed
from a checkpoint of another config, a config edited after attach (the same rule for every method), a
``torch.compile`` wrapper given to attach, and an ATP export whose pruned LoRA groups are not zero.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
import transformers
from conftest import tiny_causal_lm, with_lora

import lightning_prune as lp
from lightning_prune.errors import AttachStateError, PruningConfigError, TrainingContractError, UnsupportedModelError

IDS = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))


# -- gates left out of the optimizer ------------------------------------------------------------------------------
def _own(pruner) -> set[int]:
    return {id(p) for p in pruner.state.parameters()}


def base_only(model, pruner):
    """The user filters the trainable parameters of the base model (the gates are a child module: left out)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad and id(p) not in _own(pruner)], lr=1e-3)


def named_base_only(model, pruner):
    return torch.optim.SGD([p for n, p in model.named_parameters() if "pruning_gates" not in n], lr=1e-2)


def gates_without_multipliers(model, pruner):
    return torch.optim.AdamW(pruner.param_groups(lr=1e-3)[:2])


def documented(model, pruner):
    return torch.optim.AdamW(pruner.param_groups(lr=1e-3))


def model_parameters(model, pruner):
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def train(model, pruner, optimizer, steps: int = 3, zero_before_pruner_step: bool = False, skip_first: bool = False):
    model.train()
    for i in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss + pruner.penalty()
        loss.backward()
        if not (skip_first and i == 0):  # e.g. an AMP step skipped for inf gradients: nothing moves
            optimizer.step()
        if zero_before_pruner_step:
            optimizer.zero_grad(set_to_none=True)
        pruner.step()
        optimizer.zero_grad()


# (case, optimizer builder, train options, expected error class or None, regex)
OPTIMIZER_CASES = [
    ("base parameters only", base_only, {}, TrainingContractError,
     r"\['gates\.ffn\.log_alpha', 'gates\.heads\.log_alpha'.*received gradients but the optimizer did not update "
     r"them at pruning step 0.*pruner\.param_groups\(lr=\.\.\.\)"),
    ("named filter, SGD", named_base_only, {}, TrainingContractError,
     r"'gates\.ffn\.log_alpha'.*not in the optimizer's parameter groups.*AdamW\(pruner\.param_groups"),
    ("multipliers left out", gates_without_multipliers, {}, TrainingContractError,
     r"\['regularizer\.constraint\.lambda_1', 'regularizer\.constraint\.lambda_2'\] received gradients"),
    ("grads zeroed before pruner.step", base_only, {"zero_before_pruner_step": True}, TrainingContractError,
     r"received gradients but the optimizer did not update them"),
    ("skipped first step", base_only, {"skip_first": True}, TrainingContractError,
     r"at pruning step 1 \(other parameters moved\)"),
    ("param_groups", documented, {}, None, None),
    ("model.parameters()", model_parameters, {}, None, None),
    ("param_groups, skipped first step", documented, {"skip_first": True}, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    "build, options, error, pattern", [c[1:] for c in OPTIMIZER_CASES], ids=[c[0] for c in OPTIMIZER_CASES]
)
def test_gates_outside_the_optimizer_are_detected_at_the_first_step(build, options, error, pattern):
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3))
    optimizer = build(model, pruner)
    if error is None:
        train(model, pruner, optimizer, **options)
        assert pruner._update_check is None, "the check concludes and removes its hooks"
        return
    with pytest.raises(error, match=pattern):
        train(model, pruner, optimizer, **options)


def test_hook_optimizer_refuses_an_optimizer_without_the_gates():
    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3))
    with pytest.raises(TrainingContractError, match=r"does not hold 4 pruning parameter\(s\).*param_groups"):
        pruner.hook_optimizer(base_only(model, pruner))
    pruner.hook_optimizer(documented(model, pruner))  # fine


def test_an_integration_optimizer_without_the_gates_gets_them():
    """Lightning's configure_optimizers (and the HF Trainer) may omit the gates: the regrouping adds them."""
    from lightning_prune.integrations.optim import GATE_GROUP, MULTIPLIER_GROUP, regroup_optimizer_

    model = tiny_causal_lm("llama")
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3))
    optimizer = base_only(model, pruner)
    regroup_optimizer_(optimizer, pruner)
    names = [g.get("name") for g in optimizer.param_groups]
    assert GATE_GROUP in names and MULTIPLIER_GROUP in names
    before = pruner.gates["ffn"].log_alpha.detach().clone()
    train(model, pruner, optimizer, steps=1)
    assert not torch.equal(before, pruner.gates["ffn"].log_alpha.detach())


# -- HF Trainer resumed from another config -----------------------------------------------------------------------
def _hf_trainer(tmp_path, config, steps: int, model=None, save: bool = True):
    from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 128, (8, 12))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="steps" if save else "no",
        save_steps=2,
        disable_tqdm=True,
    )
    model = model if model is not None else tiny_causal_lm("llama").train()
    return PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[PruningTrainerCallback(config)])


BASE = dict(target_sparsity=0.3, structures=("heads", "ffn"))
# (case, config of the resumed run, expected error class or None, regex)
RESUME_CASES = [
    ("another target", lp.L0Config(**{**BASE, "target_sparsity": 0.4}), PruningConfigError,
     r"(?s)different pruning config.*'target_sparsity': \(0\.3, 0\.4\).*without `resume_from_checkpoint`"),
    ("other structures", lp.L0Config(**{**BASE, "structures": ("ffn",)}), PruningConfigError,
     r"(?s)different pruning config.*'structures': \(\['heads', 'ffn'\], \['ffn'\]\).*gate_shapes"),
    ("another method", lp.STEConfig(**BASE), PruningConfigError,
     r"(?s)different pruning config.*'method': \('l0', 'ste'\)"),
    ("another gate_lr", lp.L0Config(**{**BASE, "gate_lr": 0.05}), PruningConfigError,
     r"'gate_lr': \(0\.5, 0\.05\)"),
    ("same config", lp.L0Config(**BASE), None, None),
]  # fmt: skip


@pytest.mark.parametrize("config, error, pattern", [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_hf_trainer_refuses_a_checkpoint_of_another_config(tmp_path, config, error, pattern):
    _hf_trainer(tmp_path, lp.L0Config(**BASE), steps=2).train()
    resumed = _hf_trainer(tmp_path, config, steps=3)
    if error is None:
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == 3
        return
    with pytest.raises(error, match=pattern):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.state.global_step == 0


def test_hf_trainer_refuses_a_dense_checkpoint(tmp_path):
    dense = transformers.Trainer(
        model=tiny_causal_lm("llama").train(),
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path / "run"), max_steps=2, save_steps=2, report_to=[], use_cpu=True
        ),
        train_dataset=[{"input_ids": row, "labels": row} for row in torch.randint(0, 128, (8, 12))],
    )
    dense.train()
    resumed = _hf_trainer(tmp_path, lp.L0Config(**BASE), steps=3)
    with pytest.raises(PruningConfigError, match=r"has no pruning gates.*before building the PruningTrainer"):
        resumed.train(resume_from_checkpoint=True)


# -- the config is fixed at attach, the same way for every method ---------------------------------------------------
def _pat():
    return tiny_causal_lm("llama"), lp.PATConfig(target_hidden_size=48, hsm_rank=8)


METHODS = [
    ("l0", lambda: (tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.3))),
    ("ste", lambda: (tiny_causal_lm("llama"), lp.STEConfig(target_sparsity=0.3))),
    ("polarization", lambda: (tiny_causal_lm("llama"), lp.PolarizationConfig(target_sparsity=0.3))),
    ("atp", lambda: (with_lora(tiny_causal_lm("llama")), lp.ATPConfig(target_sparsity=0.3))),
    ("pat", _pat),
    ("compresso", lambda: (with_lora(tiny_causal_lm("llama"), targets=("q_proj", "v_proj")), lp.CompressoConfig())),
]
# (case, field, value, on the pruner's copy?, expected error class or None, regex)
EDITS = [
    ("user's gate_lr", "gate_lr", 0.25, False, AttachStateError,
     r"took its own copy, so setting `gate_lr`=0\.25 here would have no effect.*"
     r"dataclasses\.replace\(config, gate_lr="),
    ("user's warmup_steps", "warmup_steps", 7, False, AttachStateError,
     r"setting `warmup_steps`=7 here would have no effect"),
    ("user's structures", "structures", ("ffn",), False, AttachStateError, r"setting `structures`=\('ffn',\)"),
    ("pruner's gate_lr", "gate_lr", 0.25, True, AttachStateError,
     r"`pruner\.config\.gate_lr` cannot change after attach\(\).*Only \[('match_target', )?'export_rtol'\].*"
     r"pruner\.detach\(\)"),
    ("pruner's export_rtol", "export_rtol", 1e-3, True, None, None),
    ("pruner's match_target, same value", "match_target", "current", True, None, None),
    ("pruner's export_rtol str", "export_rtol", "1e-3", True, PruningConfigError,
     r"`export_rtol` must be a finite number, got '1e-3' \(str\)"),
]  # fmt: skip


@pytest.mark.parametrize("field, value, on_pruner, error, pattern", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
@pytest.mark.parametrize("make", [m[1] for m in METHODS], ids=[m[0] for m in METHODS])
def test_config_edits_after_attach_are_refused_for_every_method(make, field, value, on_pruner, error, pattern):
    model, config = make()
    pruner = lp.attach(model, config)
    assert pruner.config is not config and pruner.config == config
    target = pruner.config if on_pruner else config
    before = getattr(pruner.config, field)
    value = before if value == "current" else value  # a no-op assignment is always fine
    if error is None:
        setattr(target, field, value)
        assert getattr(pruner.config, field) == value
        return
    with pytest.raises(error, match=pattern):
        setattr(target, field, value)
    assert getattr(pruner.config, field) == before, "the pruner's config is unchanged"


def test_a_variant_of_an_attached_config_is_a_new_editable_object():
    model, config = tiny_causal_lm("llama"), lp.ATPConfig(target_sparsity=0.3)
    pruner = lp.attach(with_lora(model), config)
    variant = dataclasses.replace(config, target_sparsity=0.5)  # the documented way: a new, editable object
    variant.control_steps = 10
    assert pruner.config.target_sparsity == 0.3 and pruner.state.regularizer.config.target_sparsity == 0.3
    pruner.config.match_target = True  # a live field: read when masks are computed
    assert pruner.deterministic_masks()  # still usable


# -- torch.compile before attach -----------------------------------------------------------------------------------
COMPILE_CASES = [
    ("compiled model", lambda: torch.compile(tiny_causal_lm("llama"))),
    ("compiled peft model", lambda: torch.compile(with_lora(tiny_causal_lm("llama")))),
]


@pytest.mark.parametrize("make", [c[1] for c in COMPILE_CASES], ids=[c[0] for c in COMPILE_CASES])
def test_compiled_model_is_refused_with_the_order_to_follow(make):
    compiled = make()
    with pytest.raises(
        UnsupportedModelError,
        match=r"torch\.compile wrapper \(OptimizedModule around .*\).*Attach to the original module and compile "
        r"afterwards.*compiled\._orig_mod",
    ):
        lp.attach(compiled, lp.L0Config(target_sparsity=0.3))
    assert not hasattr(compiled._orig_mod, "pruning_gates")
    lp.attach(compiled._orig_mod, lp.L0Config(target_sparsity=0.3))  # the advice works


# -- ATP export with pruned LoRA groups that are not zero ---------------------------------------------------------
def _atp_with_pruned_units():
    from lightning_prune.methods.atp import ATPController

    model = with_lora(tiny_causal_lm("llama"))  # B random: every LoRA group is non-zero
    pruner = lp.attach(model, lp.ATPConfig(target_sparsity=0.3))
    generator = pruner.gates["ffn"].generator
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in generator.heads.values():
            p.copy_(torch.randn(p.shape, generator=gen))
    return pruner, ATPController(pruner)


# (case, preparation, expected warning regex or None)
ATP_EXPORT_CASES = [
    ("pruned LoRA not zero", lambda atp: None,
     r"ATP export with \d+ of \d+ pruned units' LoRA rows/columns not zero \(largest L2 norm \d\.\d+e[-+]\d+\).*"
     r"zero_pruned_lora_\(\)"),
    ("after zero_pruned_lora_", lambda atp: atp.zero_pruned_lora_(), None),
]  # fmt: skip


@pytest.mark.parametrize("prepare, pattern", [c[1:] for c in ATP_EXPORT_CASES], ids=[c[0] for c in ATP_EXPORT_CASES])
def test_atp_export_warns_when_pruned_lora_groups_are_not_zero(caplog, prepare, pattern):
    pruner, atp = _atp_with_pruned_units()
    assert atp.pruned_lora_norm() > 0
    prepare(atp)
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        pruner.export()
    warned = [r.getMessage() for r in caplog.records if "LoRA rows/columns not zero" in r.getMessage()]
    if pattern is None:
        assert not warned
    else:
        assert len(warned) == 1 and re.search(pattern, warned[0]), warned


@pytest.mark.parametrize(
    "config", [lp.STEConfig(target_sparsity=0.3), lp.PolarizationConfig(target_sparsity=0.3, decision="target")]
)
def test_match_target_is_not_live_where_the_method_fixes_it(config):
    """STE's export mask is its training mask and polarization's ``match_target`` follows ``decision``."""
    pruner = lp.attach(tiny_causal_lm("llama"), config)
    with pytest.raises(AttachStateError, match=r"`pruner\.config\.match_target` cannot change.*Only \['export_rtol'\]"):
        pruner.config.match_target = not pruner.config.match_target
