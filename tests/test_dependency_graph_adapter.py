"""The dependency_graph adapter (torch-pruning's DepGraph, Fang et al. CVPR 2023) on plain CNNs and MLPs:
planted-channel recovery, export equivalence, exact parameter counts, history replay and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from cnn_models import image_batch, tiny_mlp, tiny_resnet
from conftest import randomize_gates, tiny_causal_lm

import lightning_prune as lp
from lightning_prune.adapters.dependency_graph import _fold
from lightning_prune.export.history import load_pruned, save_pruned
from lightning_prune.export.report import count_parameters


def _plant(pristine: torch.nn.Module, pruner, truth: torch.Tensor) -> torch.nn.Module:
    """Teacher: the model as attached with the planted-pruned channels silenced at every mask point (the student
    keeps them), so matching the teacher requires closing exactly those channels."""
    teacher = pristine
    modules = dict(teacher.named_modules())
    padded = torch.cat([truth, torch.ones(1)])
    with torch.no_grad():
        for name, index in pruner.adapter.mask_points().items():
            _fold(modules[name], padded[torch.where(index < 0, truth.numel(), index)])
    return teacher


def _block_outputs(model: torch.nn.Module, store: dict, tag: str) -> None:
    for name in ("block1", "block2"):
        getattr(model, name).register_forward_hook(lambda m, a, out, key=(tag, name): store.__setitem__(key, out))


def test_planted_channels_recovered_and_export_matches():
    student = tiny_resnet(seed=0, classes=16)
    config = lp.L0Config(
        structures=("channels",), target_sparsity=0.3, gate_lr=0.3, lagrangian_lr=0.01, warmup_steps=260
    )
    pristine = copy.deepcopy(student)  # the model as attached, without gates or hooks
    pruner = lp.attach(student, config, example_inputs=image_batch())
    units = pruner.specs["channels"].units
    assert units == 12 + 12 + 8 + 8  # residual groups (stem/block1, down/block2) and the two blocks' inner channels
    truth = torch.ones(units)
    truth[torch.randperm(units, generator=torch.Generator().manual_seed(3))[: units // 2]] = 0.0
    teacher = _plant(pristine, pruner, truth)
    own = {id(p) for p in pruner.state.parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) in own)  # only the gates (and λ) learn
    planted = float(pruner.cost.sparsity({"channels": truth[None]}))
    pruner.state.regularizer.target_sparsity = planted
    optimizer = torch.optim.Adam(pruner.param_groups(lr=0.0))
    pruner.hook_optimizer(optimizer)
    pruner.mask_sampling = True  # sampled gates while BatchNorm uses its running statistics (eval mode)
    features: dict = {}
    _block_outputs(student, features, "student")
    _block_outputs(teacher, features, "teacher")
    data = torch.Generator().manual_seed(1)
    for _ in range(800):
        batch = torch.randn(8, 3, 8, 8, generator=data)
        with torch.no_grad():
            target = teacher(batch)
        loss = torch.nn.functional.mse_loss(student(batch), target) / target.var() + pruner.penalty()
        for name in ("block1", "block2"):  # block outputs: every channel's effect is visible
            ref = features[("teacher", name)]
            loss = loss + torch.nn.functional.mse_loss(features[("student", name)], ref) / ref.var()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pruner.mask_sampling = None
    student.eval()

    mask = pruner.deterministic_masks()["channels"][0]
    predicted, dropped = mask == 0, truth == 0
    tp = float((predicted & dropped).sum())
    precision, recall = tp / max(float(predicted.sum()), 1.0), tp / float(dropped.sum())
    print(f"planted channels: precision={precision:.3f} recall={recall:.3f}")
    assert precision >= 0.9 and recall >= 0.9

    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    assert count_parameters(compact) == report.params_after < report.params_before
    with torch.no_grad():
        probe = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
        assert torch.allclose(compact(probe), student(probe), atol=1e-5)


@pytest.mark.parametrize("builder,inputs", [(tiny_resnet, image_batch()), (tiny_mlp, torch.randn(2, 10))])
def test_export_exact_counts_and_history_replay(tmp_path, builder, inputs):
    model = builder(seed=1)
    pruner = lp.attach(model, lp.L0Config(structures=("channels",), target_sparsity=0.2), example_inputs=inputs)
    randomize_gates(pruner, seed=2)
    compact = pruner.export()
    report = pruner.last_report
    binary = {"channels": (pruner.deterministic_masks()["channels"] != 0).float()}
    assert count_parameters(compact) == int(pruner.cost.total(binary)[0]) == report.params_after
    assert report.params_after < report.params_before
    assert not any("pruning" in n for n, _ in compact.named_parameters())
    assert not any(m._forward_hooks for m in compact.modules())

    save_pruned(compact, tmp_path / "cnn")
    reloaded = load_pruned(tmp_path / "cnn", model_factory=lambda: builder(seed=123))
    probe = torch.randn_like(inputs) if inputs.dim() == 2 else image_batch(3, seed=5)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(probe), compact(probe))
    shapes = {n: tuple(p.shape) for n, p in reloaded.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in compact.named_parameters()}


def test_wrong_factory_is_refused(tmp_path):
    model = tiny_resnet()
    pruner = lp.attach(model, lp.L0Config(structures=("channels",), target_sparsity=0.2), example_inputs=image_batch())
    randomize_gates(pruner)
    save_pruned(pruner.export(), tmp_path / "cnn")
    with pytest.raises(lp.errors.ExportMismatchError, match="model_factory"):
        load_pruned(tmp_path / "cnn", model_factory=lambda: tiny_mlp(), example_inputs=torch.randn(1, 10))


def test_missing_example_inputs_and_unknown_models():
    with pytest.raises(lp.PruningConfigError, match=r"example_inputs=torch.randn"):
        lp.attach(tiny_resnet(), lp.L0Config(structures=("channels",)), adapter="dependency_graph")
    with pytest.raises(lp.UnsupportedModelError) as info:
        lp.attach(tiny_resnet(), lp.L0Config(structures=("channels",)))
    message = str(info.value)
    assert "dependency_graph" in message and "register_adapter" in message and "example_inputs" in message
    with pytest.raises(lp.PruningConfigError, match="takes none"):
        lp.attach(tiny_causal_lm("llama"), lp.L0Config(), example_inputs=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(lp.PruningConfigError, match="tensor or a tuple of tensors"):
        lp.attach(tiny_resnet(), lp.L0Config(structures=("channels",)), example_inputs={"x": image_batch()})


def test_attach_keeps_no_second_copy_of_the_weights():
    """The export template is weightless (meta tensors): attaching does not double a CNN's parameter memory."""
    model = tiny_resnet(seed=0, classes=16)
    pruner = lp.attach(model, lp.L0Config(structures=("channels",), target_sparsity=0.3), example_inputs=image_batch())
    real = [t for t in pruner.adapter.__dict__.values() if isinstance(t, torch.nn.Module)]
    assert real, "the adapter holds the export template"
    for module in real:
        on_cpu = [n for n, p in module.named_parameters() if p.device.type != "meta" and "pruning_gates" not in n]
        if module is not model:
            assert not on_cpu, f"a second copy of the weights: {on_cpu[:3]}"
    randomize = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in pruner.gates.values():
            gate.log_alpha.copy_(torch.randn(gate.log_alpha.shape, generator=randomize) * 3)
    compact = pruner.export()  # built from the template, filled from the live weights, then checked
    assert pruner.last_report.params_after < pruner.last_report.params_before
    assert all(p.device.type == "cpu" for p in compact.parameters())
