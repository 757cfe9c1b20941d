"""PruningTrainer + PruningTrainerCallback in a Hugging Face Trainer: target reached, phases, optimizer groups,
logs, export equal to the gated model, and bad arguments failing with a clear message."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import tiny_causal_lm

import lightning_prune as lp
from lightning_prune.errors import PruningConfigError
from lightning_prune.integrations.hf_trainer import PruningTrainer, PruningTrainerCallback
from lightning_prune.integrations.optim import GATE_GROUP, MULTIPLIER_GROUP

#: The Lightning tests' CONVERGING settings (tests/lightning_helpers.py), copied so these tests need no Lightning.
CONVERGING = dict(
    target_sparsity=0.4,
    structures=("heads", "ffn"),
    warmup_steps=60,
    init_log_alpha=1.0,
    gate_lr=0.1,
    lagrangian_lr=0.05,
    init_from_importance=False,  # tuned before importance init (issue #18); these tests pin the phase mechanics
)


class MotifTokens(torch.utils.data.Dataset):
    """Rows of a random 4-token motif repeated (what ``integrations.modules.motif_tokens`` builds)."""

    def __init__(self, num_samples: int = 16, seq_len: int = 16, vocab_size: int = 128) -> None:
        motifs = torch.randint(0, vocab_size, (num_samples, 4), generator=torch.Generator().manual_seed(0))
        self.ids = motifs.repeat(1, -(-seq_len // 4))[:, :seq_len].contiguous()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def training_args(tmp_path, max_steps: int, **overrides) -> transformers.TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.01,
        warmup_steps=5,  # the default linear schedule with warm-up: it must not touch the gate groups
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=20,
        disable_tqdm=True,
        seed=2,  # data order and gate samples; tuned like CONVERGING (a heads unit is ~7% of the parameters, so
        # the exact sparsity of a run lands within 0.02 of the target only when the head counts round well)
    )
    values.update(overrides)
    return transformers.TrainingArguments(**values)


class GateSnapshots(transformers.TrainerCallback):
    """Gate/multiplier values at the start of the given global steps (read through the pruning callback)."""

    def __init__(self, callback: PruningTrainerCallback, steps: tuple[int, ...]) -> None:
        self.callback, self.steps, self.values, self.lrs = callback, steps, {}, {}

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.global_step not in self.values:
            self.values[state.global_step] = gate_values(self.callback.pruner)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # lr of our groups as used by the step just taken (the scheduler steps after this hook)
        self.lrs[state.global_step] = {g.get("name"): g["lr"] for g in optimizer.param_groups}


class PenaltyGrads(transformers.TrainerCallback):
    """The multipliers' accumulated gradients right before each optimizer step, and one penalty's gradient."""

    def __init__(self, trainer: PruningTrainer) -> None:
        self.trainer, self.seen = trainer, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = self.trainer.pruner.multiplier_parameters()
        reference = torch.autograd.grad(self.trainer.pruner.penalty(), params)
        self.seen.append([(p.grad.clone(), r) for p, r in zip(params, reference)])


def gate_values(pruner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pruner.state.state_dict().items()}


def test_trainer_prunes_to_target_with_phases_groups_logs_and_export(tmp_path):
    transformers.set_seed(0)
    model = tiny_causal_lm("llama").train()
    export_dir = tmp_path / "compact"
    callback = PruningTrainerCallback(
        lp.L0Config(**CONVERGING), export_dir=export_dir, dense_steps=10, freeze_after_steps=270
    )
    trainer = PruningTrainer(
        model=model, args=training_args(tmp_path, 300), train_dataset=MotifTokens(), callbacks=[callback]
    )
    snaps = GateSnapshots(callback, (0, 10, 270))
    trainer.add_callback(snaps)
    trainer.train()
    pruner = trainer.pruner

    # every trainable parameter in exactly one group; gates and multipliers in theirs, no weight decay
    groups = trainer.optimizer.param_groups
    by_name = {g.get("name"): g for g in groups if g.get("name") in (GATE_GROUP, MULTIPLIER_GROUP)}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in by_name[GATE_GROUP]["params"]} == {id(p) for p in pruner.gate_parameters()}
    assert {id(p) for p in by_name[MULTIPLIER_GROUP]["params"]} == {id(p) for p in pruner.multiplier_parameters()}
    assert by_name[GATE_GROUP]["weight_decay"] == 0 and by_name[MULTIPLIER_GROUP]["weight_decay"] == 0
    # the lr the steps actually used: 0 while dense or frozen, the configured values while pruning (no warm-up)
    assert snaps.lrs[0][GATE_GROUP] == 0.0 and snaps.lrs[0][MULTIPLIER_GROUP] == 0.0
    assert snaps.lrs[10][GATE_GROUP] == 0.1 and snaps.lrs[10][MULTIPLIER_GROUP] == 0.05
    assert snaps.lrs[269][GATE_GROUP] == 0.1 and snaps.lrs[270][GATE_GROUP] == 0.0

    # phases: gates still during the dense warm-up and after the freeze, moved in between
    assert all(torch.equal(snaps.values[0][k], snaps.values[10][k]) for k in snaps.values[0])
    final = gate_values(pruner)
    assert all(torch.equal(snaps.values[270][k], final[k]) for k in final)
    moved = max(float((final[k] - snaps.values[10][k]).abs().max()) for k in final if "log_alpha" in k)
    assert moved > 1.0
    assert callback.phase == "frozen" and pruner.pruning_step == 260

    stats = pruner.stats()
    assert abs(stats["expected_sparsity"] - 0.4) <= 0.02, stats
    assert abs(stats["exact_sparsity"] - 0.4) <= 0.02, stats

    # stats reach the Trainer's logs (every logging_steps)
    logged = [h for h in trainer.state.log_history if "pruning/exact_sparsity" in h]
    assert len(logged) == 300 // 20 and logged[-1]["pruning/phase"] == 2 and "loss" in logged[-1]

    # export: report, plot, and a compact model computing what the gated eval model computes
    report = lp.ExportReport.from_json(export_dir / "lightning_prune_report.json")
    assert report.exact_sparsity == pytest.approx(stats["exact_sparsity"]) and report.max_abs_diff is not None
    assert (export_dir / "kept_units.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compact = lp.load_compact(export_dir).eval()
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        gated, small = model(input_ids=ids).logits, compact(input_ids=ids).logits
    assert torch.allclose(gated, small, atol=1e-4 * float(gated.abs().max()))
    assert sum(p.numel() for p in compact.parameters()) == report.params_after < report.params_before


def test_penalty_counts_once_per_step_with_gradient_accumulation(tmp_path):
    model = tiny_causal_lm("llama").train()
    callback = PruningTrainerCallback(lp.L0Config(**CONVERGING))
    args = training_args(tmp_path, 1, gradient_accumulation_steps=2, per_device_train_batch_size=2, max_grad_norm=0.0)
    trainer = PruningTrainer(model=model, args=args, train_dataset=MotifTokens(4), callbacks=[callback])
    grads = PenaltyGrads(trainer)
    trainer.add_callback(grads)
    trainer.train()
    # the multipliers' gradient comes from the penalty only: two accumulated micro-batches give one penalty's
    assert grads.seen and all(torch.allclose(g, r) for g, r in grads.seen[0])


def test_bad_arguments_fail_with_clear_errors(tmp_path):
    with pytest.raises(PruningConfigError, match="`freeze_after_steps`.*> `dense_steps`=10"):
        PruningTrainerCallback(lp.L0Config(**CONVERGING), dense_steps=10, freeze_after_steps=5)
    with pytest.raises(PruningConfigError, match="`dense_steps` must be an int >= 0"):
        PruningTrainerCallback(lp.L0Config(**CONVERGING), dense_steps=-1)
    with pytest.raises(PruningConfigError, match="`config` must be a PruningConfig"):
        PruningTrainerCallback({"target_sparsity": 0.5})

    args = training_args(tmp_path, 1)
    with pytest.raises(PruningConfigError, match="exactly one PruningTrainerCallback"):
        PruningTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=MotifTokens(4))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(PruningConfigError, match="overwrite_export=True"):
        PruningTrainer(
            model=tiny_causal_lm("llama"),
            args=args,
            train_dataset=MotifTokens(4),
            callbacks=[PruningTrainerCallback(lp.L0Config(**CONVERGING), export_dir=full)],
        )
    # the callback in a plain Trainer: told to use PruningTrainer
    plain = transformers.Trainer(
        model=tiny_causal_lm("llama"),
        args=args,
        train_dataset=MotifTokens(4),
        callbacks=[PruningTrainerCallback(lp.L0Config(**CONVERGING))],
    )
    with pytest.raises(PruningConfigError, match="PruningTrainer"):
        plain.train()
