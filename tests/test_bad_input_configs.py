"""Errors a user can act on, raised before work is lost (issue #14, class 5).

Every row is (case, input, expected error class, message regex); the regex names the field or path, the value
received and the fix, so a vaguer message fails the case. Config fields are checked by every config class (the
type check derives from the dataclass annotations, see ``lightning_prune.methods.base.check_field_types``);
models, example inputs and export directories are checked before the work they would spoil.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from cnn_models import TinyMLP, TinyResNet
from conftest import tiny_causal_lm, tiny_config

import lightning_prune as lp
from lightning_prune.errors import ExportDirectoryError, PruningConfigError, UnsupportedModelError

NAN, INF = math.nan, math.inf

# -- config fields of the wrong type or value, in every config class ---------------------------------------------
# (case, config class, kwargs, error class, regex: field, value and fix)
CONFIG_CASES = [
    # PruningConfig fields, through L0Config
    ("gate_lr str", lp.L0Config, {"gate_lr": "0.1"}, PruningConfigError,
     r"`gate_lr` must be a finite number, got '0\.1' \(str\).*not a string"),
    ("structures None", lp.L0Config, {"structures": None}, PruningConfigError,
     r"`structures` must be a tuple of structure names such as \('heads', 'ffn'\), got None"),
    ("structures with a number", lp.L0Config, {"structures": ("heads", 3)}, PruningConfigError,
     r"`structures` must be a tuple of structure names.*got \('heads', 3\)"),
    ("target_sparsity str", lp.L0Config, {"target_sparsity": "0.5"}, PruningConfigError,
     r"`target_sparsity` must be a number in \[0, 1\).*got '0\.5' \(str\).*not a string"),
    ("target_sparsity bool", lp.L0Config, {"target_sparsity": True}, PruningConfigError,
     r"`target_sparsity` must be a number in \[0, 1\).*got True \(bool\).*not a number"),
    ("target_sparsity nan", lp.L0Config, {"target_sparsity": NAN}, PruningConfigError,
     r"`target_sparsity` must be a number in \[0, 1\).*got nan.*NaN and inf"),
    ("warmup_steps bool", lp.L0Config, {"warmup_steps": True}, PruningConfigError,
     r"`warmup_steps` must be an int, got True \(bool\).*not a number"),
    ("warmup_steps float", lp.L0Config, {"warmup_steps": 10.0}, PruningConfigError,
     r"`warmup_steps` must be an int, got 10\.0 \(float\).*write `warmup_steps=10`"),
    ("warmup_steps negative", lp.L0Config, {"warmup_steps": -5}, PruningConfigError,
     r"`warmup_steps` must be a non-negative int, got -5.*0 applies the full target"),
    ("gate_lr nan", lp.L0Config, {"gate_lr": NAN}, PruningConfigError,
     r"`gate_lr` must be a finite number, got nan.*NaN and inf.*default is 0\.5"),
    ("gate_lr negative", lp.L0Config, {"gate_lr": -0.1}, PruningConfigError,
     r"`gate_lr` must be positive, got -0\.1.*learning rate.*freeze_after_steps"),
    ("lagrangian_lr zero", lp.L0Config, {"lagrangian_lr": 0.0}, PruningConfigError,
     r"`lagrangian_lr` must be positive, got 0\.0.*learning rate"),
    ("lagrangian_lr str", lp.L0Config, {"lagrangian_lr": "1e-2"}, PruningConfigError,
     r"`lagrangian_lr` must be a finite number or None, got '1e-2' \(str\)"),
    ("export_rtol inf", lp.L0Config, {"export_rtol": INF}, PruningConfigError,
     r"`export_rtol` must be a finite number, got inf.*default is 0\.0001"),
    ("uniform str", lp.L0Config, {"uniform": "yes"}, PruningConfigError,
     r"`uniform` must be True or False, got 'yes' \(str\)"),
    ("match_target int", lp.L0Config, {"match_target": 1}, PruningConfigError,
     r"`match_target` must be True or False, got 1 \(int\)"),
    ("target None", lp.L0Config, {"target": None}, PruningConfigError,
     r"`target` must be a string, got None.*default is 'params'"),
    ("target unknown", lp.L0Config, {"target": "latency"}, PruningConfigError,
     r"`target` must be 'params' or 'flops', got 'latency'.*'flops' their FLOPs"),
    ("flops_seq_len zero", lp.L0Config, {"flops_seq_len": 0}, PruningConfigError,
     r"`flops_seq_len` must be >= 1, got 0.*sequence length"),
    ("keep_units float", lp.L0Config, {"structures": ("ffn",), "keep_units": {"ffn": 2.5}}, PruningConfigError,
     r"`keep_units\['ffn'\]` must be a non-negative int \(units to keep per row\), got 2\.5"),
    ("keep_units list", lp.L0Config, {"structures": ("ffn",), "keep_units": [("ffn", 2)]}, PruningConfigError,
     r"`keep_units` must be a dict of structure names to ints such as \{'ffn': 32\}, got \[\('ffn', 2\)\] \(list\)"),
    ("multiple_of bool", lp.L0Config, {"structures": ("ffn",), "multiple_of": {"ffn": True}}, PruningConfigError,
     r"`multiple_of\['ffn'\]` must be a positive int \(e\.g\. 8, 32, 64\), got True"),
    ("keep_units bool", lp.L0Config, {"structures": ("ffn",), "keep_units": {"ffn": True}}, PruningConfigError,
     r"`keep_units\['ffn'\]` must be a non-negative int \(units to keep per row\), got True"),
    ("multiple_of None", lp.L0Config, {"multiple_of": None}, PruningConfigError,
     r"`multiple_of` must be a dict of structure names to ints such as \{'ffn': 32\}, got None.*default is \{\}"),
    ("distill_weight negative", lp.L0Config, {"distill_weight": -1.0}, PruningConfigError,
     r"`distill_weight` must be a non-negative number \(0 turns it off\), got -1\.0"),
    ("distill_temperature str", lp.L0Config, {"distill_temperature": "2"}, PruningConfigError,
     r"`distill_temperature` must be a finite number, got '2' \(str\)"),
    # L0Config's own
    ("init_log_alpha str", lp.L0Config, {"init_log_alpha": "3"}, PruningConfigError,
     r"`init_log_alpha` must be a finite number, got '3' \(str\).*default is 3\.0"),
    ("temperature inf", lp.L0Config, {"temperature": INF}, PruningConfigError,
     r"`temperature` must be a finite number, got inf.*NaN and inf"),
    ("log_alpha_clamp negative", lp.L0Config, {"log_alpha_clamp": -1.0}, PruningConfigError,
     r"`log_alpha_clamp` must be a positive number, got -1\.0.*default"),
    ("target_architecture str counts", lp.L0Config, {"structures": ("heads",), "target_architecture": {"heads": "2"}},
     PruningConfigError, r"`target_architecture\['heads'\]` must be a positive int \(units kept in every row\), "
     r"got '2'"),
    ("target_architecture list", lp.L0Config, {"structures": ("heads",), "target_architecture": ["heads", 2]},
     PruningConfigError, r"`target_architecture` must be a dict of structure names to ints.* or None, "
     r"got \['heads', 2\]"),
    # STEConfig
    ("STE init_score None", lp.STEConfig, {"init_score": None}, PruningConfigError,
     r"`init_score` must be a finite number, got None.*default is 0\.5"),
    ("STE score_clamp str", lp.STEConfig, {"score_clamp": "1"}, PruningConfigError,
     r"`score_clamp` must be a finite number or None, got '1' \(str\)"),
    ("STE gate_lr zero", lp.STEConfig, {"gate_lr": 0}, PruningConfigError,
     r"`gate_lr` must be positive, got 0.*default is 0\.05"),
    # PolarizationConfig
    ("polarization reg_lambda str", lp.PolarizationConfig, {"reg_lambda": "1e-4"}, PruningConfigError,
     r"`reg_lambda` must be a finite number, got '1e-4' \(str\).*not a string"),
    ("polarization t nan", lp.PolarizationConfig, {"t": NAN}, PruningConfigError,
     r"`t` must be a finite number or None, got nan.*NaN and inf"),
    ("polarization cost_weighted str", lp.PolarizationConfig, {"cost_weighted": "no"}, PruningConfigError,
     r"`cost_weighted` must be True or False, got 'no'"),
    ("polarization init_value bool", lp.PolarizationConfig, {"init_value": True}, PruningConfigError,
     r"`init_value` must be a finite number, got True \(bool\).*not a number"),
    ("polarization decision None", lp.PolarizationConfig, {"decision": None}, PruningConfigError,
     r"`decision` must be a string, got None.*default is 'valley'"),
    # ATPConfig
    ("ATP control_steps float", lp.ATPConfig, {"control_steps": 1000.0}, PruningConfigError,
     r"`control_steps` must be an int, got 1000\.0.*write `control_steps=1000`"),
    ("ATP generator_dim str", lp.ATPConfig, {"generator_dim": "64"}, PruningConfigError,
     r"`generator_dim` must be an int, got '64' \(str\).*not a string"),
    ("ATP proximal None", lp.ATPConfig, {"proximal": None}, PruningConfigError,
     r"`proximal` must be True or False, got None.*default is True"),
    ("ATP offset nan", lp.ATPConfig, {"offset": NAN}, PruningConfigError,
     r"`offset` must be a finite number, got nan.*NaN and inf"),
    ("ATP budget_weight negative", lp.ATPConfig, {"budget_weight": -1.0}, PruningConfigError,
     r"`budget_weight` must be a positive number, got -1\.0"),
    ("ATP generator_seed float", lp.ATPConfig, {"generator_seed": 1.5}, PruningConfigError,
     r"`generator_seed` must be an int, got 1\.5 \(float\)"),
    ("ATP gate_lr negative", lp.ATPConfig, {"gate_lr": -1e-3}, PruningConfigError,
     r"`gate_lr` must be positive, got -0\.001.*default is 0\.001"),
    # PATConfig
    ("PAT target_hidden_size str", lp.PATConfig, {"target_hidden_size": "48"}, PruningConfigError,
     r"`target_hidden_size` must be an int or None, got '48' \(str\).*not a string"),
    ("PAT total_steps None", lp.PATConfig, {"target_hidden_size": 48, "total_steps": None}, PruningConfigError,
     r"`total_steps` must be an int, got None.*default is 10000"),
    ("PAT hsm_rank float", lp.PATConfig, {"target_hidden_size": 48, "hsm_rank": 2.0}, PruningConfigError,
     r"`hsm_rank` must be an int, got 2\.0.*write `hsm_rank=2`"),
    ("PAT count_weight nan", lp.PATConfig, {"target_hidden_size": 48, "count_weight": NAN}, PruningConfigError,
     r"`count_weight` must be a finite number, got nan.*NaN and inf"),
    ("PAT freeze_fraction str", lp.PATConfig, {"target_hidden_size": 48, "freeze_fraction": "0.8"},
     PruningConfigError, r"`freeze_fraction` must be a finite number, got '0\.8' \(str\)"),
    ("PAT gate_lr negative", lp.PATConfig, {"target_hidden_size": 48, "gate_lr": -5e-5}, PruningConfigError,
     r"`gate_lr` must be positive, got -5e-05.*learning rate"),
    # CompressoConfig
    ("Compresso require_frozen_base str", lp.CompressoConfig, {"require_frozen_base": "true"}, PruningConfigError,
     r"`require_frozen_base` must be True or False, got 'true' \(str\)"),
    ("Compresso lagrangian_lr negative", lp.CompressoConfig, {"lagrangian_lr": -0.1}, PruningConfigError,
     r"`lagrangian_lr` must be positive, got -0\.1.*learning rate"),
    ("Compresso target_sparsity bool", lp.CompressoConfig, {"target_sparsity": False}, PruningConfigError,
     r"`target_sparsity` must be a number in \[0, 1\).*got False \(bool\)"),
    ("Compresso init_log_alpha inf", lp.CompressoConfig, {"init_log_alpha": -INF}, PruningConfigError,
     r"`init_log_alpha` must be a finite number, got -inf"),
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs, error, pattern", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_field_is_refused_with_field_value_and_fix(cls, kwargs, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        cls(**kwargs)
    assert type(info.value) is error


@pytest.mark.parametrize(
    "cls", [lp.L0Config, lp.STEConfig, lp.PolarizationConfig, lp.ATPConfig, lp.PATConfig, lp.CompressoConfig]
)
def test_every_config_class_checks_field_types(cls):
    """The check derives from the annotations: a string in any float field of any method is refused by name."""
    import dataclasses

    base = {"target_hidden_size": 48} if cls is lp.PATConfig else {}
    floats = [f.name for f in dataclasses.fields(cls) if str(f.type).split("|")[0].strip() == "float"]
    assert floats
    for name in floats:
        with pytest.raises(PruningConfigError, match=rf"`{name}` must be .*got 'x' \(str\)"):
            cls(**{**base, name: "x"})


def test_numpy_scalars_and_lists_are_accepted_as_plain_values():
    config = lp.L0Config(target_sparsity=np.float64(0.3), warmup_steps=np.int64(10), structures=["heads", "ffn"])
    assert type(config.target_sparsity) is float and type(config.warmup_steps) is int
    assert config.structures == ("heads", "ffn")


# -- models and inputs that cannot be pruned or exported: refused with the cause -----------------------------------
def _meta_llama():
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(tiny_config("llama"))


def _attach_meta_then_export():
    lp.attach(_meta_llama(), lp.L0Config(target_sparsity=0.3)).export()


def _save_meta(tmp_path):
    lp.attach(_meta_llama(), lp.L0Config(target_sparsity=0.3)).save_compact(tmp_path / "out")


def _attach_cnn(model, inputs):
    lp.attach(model, lp.L0Config(structures=("channels",), target_sparsity=0.3), example_inputs=inputs)


# (case, action(tmp_path), error class, regex)
MODEL_CASES = [
    ("meta export", lambda tmp: _attach_meta_then_export(), lp.AttachStateError,
     r"weights were never materialised.*meta device.*to_empty\(device='cpu'\).*load_state_dict"),
    ("meta save_compact", _save_meta, lp.AttachStateError, r"weights were never materialised"),
    ("zero layers llama", lambda tmp: lp.attach(tiny_causal_lm("llama", num_hidden_layers=0), lp.L0Config()),
     UnsupportedModelError, r"LlamaForCausalLM has num_hidden_layers=0.*at least one layer"),
    ("zero layers qwen3", lambda tmp: lp.attach(tiny_causal_lm("qwen3", num_hidden_layers=0), lp.L0Config()),
     UnsupportedModelError, r"Qwen3ForCausalLM has num_hidden_layers=0"),
    ("zero layers gpt2", lambda tmp: lp.attach(
        transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=0, n_embd=32, n_head=4, vocab_size=64)),
        lp.L0Config()), UnsupportedModelError, r"GPT2LMHeadModel has num_hidden_layers=0"),
    ("zero ffn width", lambda tmp: lp.attach(tiny_causal_lm("llama", intermediate_size=0),
                                             lp.L0Config(structures=("ffn",), target_sparsity=0.0)),
     UnsupportedModelError, r"nothing to gate for \['ffn'\].*\(2, 0\).*intermediate_size"),
    ("CNN wrong channels", lambda tmp: _attach_cnn(TinyResNet(), torch.randn(2, 4, 8, 8)), PruningConfigError,
     r"`example_inputs` of shape \(2, 4, 8, 8\) do not run through TinyResNet: RuntimeError: .*channels.*"
     r"shaped as the model's training inputs"),
    ("CNN no batch dim", lambda tmp: _attach_cnn(TinyResNet(pool=False), torch.randn(3, 8, 8)), PruningConfigError,
     r"`example_inputs` of shape \(3, 8, 8\) do not run through TinyResNet.*batch dimension included"),
    ("CNN wrong spatial size", lambda tmp: _attach_cnn(TinyResNet(pool=False), torch.randn(2, 3, 16, 16)),
     PruningConfigError, r"`example_inputs` of shape \(2, 3, 16, 16\) do not run through TinyResNet: RuntimeError.*"
     r"mat1 and mat2 shapes cannot be multiplied"),
    ("MLP wrong features", lambda tmp: _attach_cnn(TinyMLP(), torch.randn(2, 7)), PruningConfigError,
     r"`example_inputs` of shape \(2, 7\) do not run through TinyMLP: RuntimeError.*\(2x7 and 10x16\)"),
    ("MLP two inputs", lambda tmp: _attach_cnn(TinyMLP(), (torch.randn(2, 10), torch.randn(2, 10))),
     PruningConfigError, r"of shape \(2, 10\), \(2, 10\) do not run through TinyMLP: TypeError.*positional"),
]  # fmt: skip


@pytest.mark.parametrize("action, error, pattern", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_or_inputs_fail_with_the_cause(tmp_path, action, error, pattern):
    with pytest.raises(error, match=pattern):
        action(tmp_path)


def test_a_refused_model_gets_no_gates_and_the_config_stays_editable():
    model = tiny_causal_lm("llama", num_hidden_layers=0)
    config = lp.L0Config()
    with pytest.raises(UnsupportedModelError):
        lp.attach(model, config)
    assert not hasattr(model, "pruning_gates")
    config.gate_lr = 0.2  # not attached: still the user's to change


# -- one bad export directory, one error class on every path --------------------------------------------------------
def _non_empty(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    return target


def _a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("user data")
    return target


def _pruner_save(target):
    lp.attach(tiny_causal_lm("llama"), lp.L0Config(target_sparsity=0.0)).save_compact(target)


def _module_save(target):
    lp.save_compact(tiny_causal_lm("llama"), target)


def _hf_trainer(target):
    from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback

    args = transformers.TrainingArguments(output_dir=str(target.parent / "hf"), report_to=[], use_cpu=True)
    callback = PruningTrainerCallback(lp.L0Config(target_sparsity=0.3), export_dir=target)
    PruningTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=[], callbacks=[callback])


def _lightning_setup(target):
    fake_trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    lp.PruningCallback(lp.L0Config(target_sparsity=0.3), export_dir=target)._check_export_dir(fake_trainer)


def _cli_export(target):
    from lightning_helpers import LitLM

    from lightning_prune.cli import PruningTrainer

    ckpt = target.parent / "last.ckpt"
    ckpt.write_text("not read: the export directory is checked first")
    callback = lp.PruningCallback(lp.L0Config(target_sparsity=0.3), export_dir=target)
    PruningTrainer(callbacks=[callback], logger=False, enable_checkpointing=False).export(
        LitLM(tiny_causal_lm("llama")), str(ckpt)
    )


EXPORT_PATHS = [
    ("Pruner.save_compact", _pruner_save, "overwrite=True"),
    ("save_compact", _module_save, "overwrite=True"),
    ("PruningTrainerCallback export_dir", _hf_trainer, r"PruningTrainerCallback\(\.\.\., overwrite_export=True\)"),
    ("PruningCallback export_dir", _lightning_setup, "`overwrite_export=True`"),
    ("lightning-prune export", _cli_export, "`--overwrite true` for `lightning-prune export`"),
]
DIRECTORIES = [
    ("non-empty", _non_empty, r"exists and is not empty\. Pass .*{hint}.* to replace it"),
    ("a file", _a_file, r"exists and is a file; choose a directory path"),
]


@pytest.mark.parametrize("make_dir, pattern", [d[1:] for d in DIRECTORIES], ids=[d[0] for d in DIRECTORIES])
@pytest.mark.parametrize("export, hint", [p[1:] for p in EXPORT_PATHS], ids=[p[0] for p in EXPORT_PATHS])
def test_bad_export_directory_raises_the_same_error_on_every_path(tmp_path, export, hint, make_dir, pattern):
    target = make_dir(tmp_path)
    with pytest.raises(ExportDirectoryError, match=r"Export directory '.*out' " + pattern.format(hint=hint)) as info:
        export(target)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, PruningConfigError)
    assert (target / "keep.txt").read_text() == "user data" if target.is_dir() else target.read_text() == "user data"
