"""The framework-neutral ``TrainingDriver`` driven by a plain PyTorch loop (no Lightning, no transformers Trainer):
dense → prune → frozen by optimizer step, the learning rate of every group in each phase (a user's scheduler
included), the gates still outside the pruning phase, the optimizer reset at the freeze, sampling seeds, the
export with its report and plot, directory checks and the resume record."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm

import lightning_prune as lp
from lightning_prune.errors import ExportDirectoryError, PruningConfigError
from lightning_prune.export.report import count_parameters
from lightning_prune.integrations.driver import TrainingDriver
from lightning_prune.integrations.optim import GATE_GROUP, MULTIPLIER_GROUP
from lightning_prune.integrations.plots import PLOT_FILENAME
from lightning_prune.integrations.schedule import sampling_seed

DENSE, FREEZE, STEPS = 3, 8, 12
MODEL_LR, GATE_LR, LAGRANGIAN_LR = 1e-3, 0.1, 0.05


def config(**overrides) -> lp.L0Config:
    values = dict(
        target_sparsity=0.4,
        structures=("heads", "ffn"),
        warmup_steps=2,
        gate_lr=GATE_LR,
        lagrangian_lr=LAGRANGIAN_LR,
        init_from_importance=False,
    )
    values.update(overrides)
    return lp.L0Config(**values)


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(step))


def gate_values(pruner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pruner.state.gates.state_dict().items()}


def run(tmp_path, steps: int = STEPS, **driver_kwargs):
    """A plain training loop around the driver; returns it, the optimizer and what each step saw."""
    torch.manual_seed(0)
    model = tiny_causal_lm("llama").train()
    driver = TrainingDriver(config(), tmp_path / "compact", DENSE, FREEZE, **driver_kwargs)
    driver.attach(model)
    driver.use_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=MODEL_LR)  # gates included, as `self.parameters()` gives
    halving = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)  # writes every group's lr, ours too
    driver.hook_optimizer(optimizer, [halving])
    seen: list[dict] = []

    def record(*_):  # registered after the driver's pre-hook: the learning rates the update uses
        seen[-1]["lrs"] = {g.get("name"): g["lr"] for g in optimizer.param_groups}

    optimizer.register_step_pre_hook(record)
    for step in range(steps):
        driver.start_batch(step)
        weights_state = sum(
            1 for p in model.parameters() if p in optimizer.state and p not in set(driver.pruner.state.parameters())
        )
        seen.append(dict(phase=driver.phase, gates=gate_values(driver.pruner), weights_state=weights_state))
        ids = batch(step)
        loss = model(input_ids=ids, labels=ids).loss + driver.pruner.penalty()
        loss.backward()
        optimizer.step()
        halving.step()
        optimizer.zero_grad()
    return driver, optimizer, seen, model


def test_a_plain_loop_goes_dense_prune_frozen_with_the_phase_learning_rates_and_exports(tmp_path):
    # five pruning steps cannot close the gates: the freeze says so
    with pytest.warns(UserWarning, match="masks froze with the gates' expected sparsity"):
        driver, optimizer, seen, model = run(tmp_path, reset_optimizer_at_freeze=True)
    pruner = driver.pruner

    phases = [s["phase"] for s in seen]
    assert phases == ["dense"] * DENSE + ["prune"] * (FREEZE - DENSE) + ["frozen"] * (STEPS - FREEZE)
    for s in seen:  # ours pinned against the scheduler (0 outside pruning); the model's groups follow it
        pruning = s["phase"] == "prune"
        assert s["lrs"][GATE_GROUP] == (GATE_LR if pruning else 0.0)
        assert s["lrs"][MULTIPLIER_GROUP] == (LAGRANGIAN_LR if pruning else 0.0)
        assert s["lrs"][None] == pytest.approx(MODEL_LR * 0.5)
    groups = {g.get("name"): g for g in optimizer.param_groups}
    assert {id(p) for p in groups[GATE_GROUP]["params"]} == {id(p) for p in pruner.gate_parameters()}
    assert groups[GATE_GROUP]["weight_decay"] == 0.0 and groups[MULTIPLIER_GROUP]["weight_decay"] == 0.0

    # gates still while dense and once frozen, moved while pruning
    before, start, frozen = seen[0]["gates"], seen[DENSE]["gates"], seen[FREEZE]["gates"]
    assert all(torch.equal(before[k], start[k]) for k in before)
    assert all(torch.equal(frozen[k], v) for k, v in gate_values(pruner).items())
    assert any(not torch.equal(start[k], frozen[k]) for k in start if "log_alpha" in k)
    # the freeze forgets the model weights' optimizer state (and only at the freeze)
    assert seen[FREEZE - 1]["weights_state"] > 0 and seen[FREEZE]["weights_state"] == 0
    assert seen[FREEZE + 1]["weights_state"] > 0
    assert pruner.pruning_step == FREEZE - DENSE
    stats = driver.log_stats_dict()
    assert stats["pruning/phase"] == 2.0 and "pruning/exact_sparsity" in stats

    assert driver.finish(STEPS) is None
    plot_path, failure = driver.export()
    assert failure is None and plot_path == tmp_path / "compact" / PLOT_FILENAME and plot_path.is_file()
    report = pruner.last_report
    assert report.exact_sparsity >= 0.4 and report.params_after < report.params_before
    compact = lp.load_compact(tmp_path / "compact")
    assert count_parameters(compact) == report.params_after
    model.eval()
    ids = batch(99)
    with torch.no_grad():
        assert torch.allclose(compact(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_sampling_seeds_count_micro_batches_and_depend_on_position_only(tmp_path):
    driver = TrainingDriver(config(), dense_steps=DENSE, seed=7)
    driver.attach(tiny_causal_lm("llama"))
    driver.use_seed(123)  # an explicit seed wins over the framework's
    seeds = []
    for step in (4, 4, 5):
        driver.start_batch(step)
        seeds.append(driver.pruner.sample_seed)
    assert seeds == [sampling_seed(7, 4, 0), sampling_seed(7, 4, 1), sampling_seed(7, 5, 0)]
    driver.start_batch(5, micro_batch=3)
    assert driver.pruner.sample_seed == sampling_seed(7, 5, 3) and driver.phase == "prune"
    assert driver.pruner.pruning_step == 5 - DENSE


def test_a_run_ending_in_the_dense_phase_says_so(tmp_path):
    driver = TrainingDriver(config(), tmp_path / "dense", dense_steps=DENSE, plot=False)
    driver.attach(tiny_causal_lm("llama"))
    driver.start_batch(DENSE - 1)
    assert "ended in the dense phase" in driver.finish(DENSE)
    driver.export()
    assert driver.pruner.last_report.params_after == driver.pruner.last_report.params_before


def test_export_directory_checks_and_the_resume_record(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    driver = TrainingDriver(config(), tmp_path / "full", DENSE, overwrite_hint="`--please`")
    with pytest.raises(ExportDirectoryError, match="not empty.*`--please`"):
        driver.check_export_dir()
    assert driver.export_dir_problem(tmp_path / "empty") is None
    assert TrainingDriver(config(), tmp_path / "full", overwrite_export=True).export_dir_problem() is None

    driver.attach(tiny_causal_lm("llama"))
    driver.use_seed(5)
    driver.set_step(DENSE + 1)
    state = driver.state_dict()
    assert (state["phase"], state["global_step"], state["seed"], state["pruning_step"]) == ("prune", DENSE + 1, 5, 1)
    resumed = TrainingDriver(config(), dense_steps=2)
    with pytest.warns(UserWarning, match="trained with dense_steps=3, this run uses 2"):
        resumed.load_state_dict(state)
    assert (resumed.phase, resumed.global_step, resumed.base_seed) == ("prune", DENSE + 1, 5)
    driver.check_record(state, "afresh")  # the same config and gates
    other = TrainingDriver(config(target_sparsity=0.3))
    other.attach(tiny_causal_lm("llama"))
    with pytest.raises(PruningConfigError, match="different pruning config.*target_sparsity.*start a new run afresh"):
        other.check_record(driver.resume_record(), "afresh")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(config="l0"), "`config` must be a PruningConfig"),
        (dict(export_dir=3), "`export_dir` must be a path"),
        (dict(dense_steps=-1), "`dense_steps` must be an int >= 0"),
        (dict(dense_steps=4, freeze_after_steps=4), "`freeze_after_steps` must be None or an int > `dense_steps`=4"),
        (dict(seed="0"), "`seed` must be an int"),
        (dict(plot="yes"), "`plot` must be True or False"),
        (dict(schedule="fast"), "`schedule` must be one of"),
    ],
)
def test_bad_options_are_refused_with_the_argument_named(kwargs, match):
    values = dict(config=config())
    values.update(kwargs)
    with pytest.raises(PruningConfigError, match=match):
        TrainingDriver(**values)


def test_the_driver_imports_no_training_framework():
    import ast
    from pathlib import Path

    import lightning_prune.integrations as integrations

    folder = Path(integrations.__file__).parent
    for name in ("driver", "schedule", "facade", "resume", "optim"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        roots = {m.split(".")[0] for m in imported}
        assert not roots & {"lightning", "pytorch_lightning", "lightning_fabric", "transformers"}, (name, roots)


@pytest.mark.parametrize("integration", ["lightning", "hf"])
def test_callbacks_take_the_driver_options_once_and_forward_them(integration):
    """Both callbacks take the options of ``RunOptions`` as keywords, keep them on their driver and read/write them
    under their own name; an unknown or positional option is refused naming the callback."""
    from lightning_prune.integrations.facade import RunOptions
    from lightning_prune.integrations.hf_trainer import PruningTrainerCallback

    cls = lp.PruningCallback if integration == "lightning" else PruningTrainerCallback
    options = dict(dense_steps=DENSE, freeze_after_steps=FREEZE, seed=7, plot=False, schedule="manual")
    assert set(options) <= set(RunOptions.__annotations__)
    callback = cls(config(), None, **options)
    for name, value in options.items():
        assert getattr(callback.driver, name) == value and getattr(callback, name) == value
    callback.dense_steps = 2  # an option written on the callback is the driver's
    assert callback.driver.dense_steps == 2 and callback.phase_at(1) == "dense" and callback.phase_at(2) == "prune"
    assert callback.pruner is None and callback.phase == callback.driver.phase
    with pytest.raises(AttributeError, match="cannot be set"):
        callback.pruner = None
    with pytest.raises(TypeError, match=rf"{cls.__name__}\(\) got unexpected keyword argument\(s\) 'dense_step'.*"):
        cls(config(), dense_step=3)
    with pytest.raises(TypeError):  # options are keyword-only
        cls(config(), None, None, 3)
    with pytest.raises(AttributeError, match="no_such_option"):
        callback.no_such_option  # noqa: B018


def test_every_run_option_is_documented_once_for_both_callbacks_and_the_cli():
    """The options' text lives in one place (``RUN_OPTIONS_DOC``): each callback's ``help()`` shows it under Args, and
    ``RunOptions``' docstring (which ``lightning-prune fit --help`` reads through jsonargparse) carries it too."""
    from docstring_parser import parse

    from lightning_prune.integrations.facade import RUN_OPTIONS_DOC, RunOptions
    from lightning_prune.integrations.hf_trainer import PruningTrainerCallback

    options = list(RunOptions.__annotations__)
    assert [p.arg_name for p in parse(RunOptions.__doc__).params] == options
    for cls in (lp.PruningCallback, PruningTrainerCallback):
        assert "{run_options}" not in cls.__doc__ and RUN_OPTIONS_DOC in cls.__doc__
        documented = [p.arg_name for p in parse(cls.__doc__).params]
        assert set(options) <= set(documented) and len(documented) == len(set(documented)), cls.__name__
