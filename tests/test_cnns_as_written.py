"""Issue #14, class 4: CNNs as people write them. torchvision-style networks (our own code, tiny width) with
``inplace=True`` activations after masked BatchNorms and ``out += identity`` adds, and models that *are* containers
(``nn.Sequential``, ``nn.ModuleList`` / ``nn.ModuleDict`` subclasses, a forward over ``self.children()``), through
attach → training steps → export → compact equals gated → exact parameter count → save/load round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_gates
from torch import nn
from torchvision_style_models import (
    ChildrenMLP,
    DictMLP,
    ListMLP,
    MobileNetV2Small,
    ResNetSmall,
    calibrated,
    sequential_cnn,
    sequential_mlp,
    train_gates,
)

import lightning_prune as lp
from lightning_prune.export.history import load_pruned, save_pruned
from lightning_prune.export.report import count_parameters
from lightning_prune.pruner import STATE_ATTRIBUTE


def _images(size: int):
    return lambda batch, seed: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _vectors(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 10, generator=torch.Generator().manual_seed(seed))


def _build(factory, inputs, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return calibrated(factory(), inputs(8, seed + 100), seed)


# name → (factory, inputs(batch, seed), mask points whose output is overwritten in place: at least)
CASES = {
    "resnet18_style": (ResNetSmall, _images(16), {"bn1", "layer1.0.bn1", "layer1.0.bn2", "layer4.1.bn2"}),
    "mobilenet_v2_style": (MobileNetV2Small, _images(16), {"features.1", "features.3.conv.1", "features.10"}),
    "sequential_cnn": (sequential_cnn, _images(8), {"1", "4"}),
    "sequential_mlp": (sequential_mlp, _vectors, {"0", "2"}),
    "module_list": (ListMLP, _vectors, {"0"}),
    "module_dict": (DictMLP, _vectors, set()),
    "children_loop": (ChildrenMLP, _vectors, {"fc1"}),
}
METHODS = {
    "l0": lambda: lp.L0Config(structures=("channels",), target_sparsity=0.3, gate_lr=0.1),  # memory-lean mask op
    "polarization": lambda: lp.PolarizationConfig(structures=("channels",), target_sparsity=0.3),  # plain product
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", list(CASES))
def test_attach_train_export_roundtrip(tmp_path, case, method):
    factory, inputs, overwritten = CASES[case]
    model = _build(factory, inputs, seed=0)
    pruner = lp.attach(model, METHODS[method](), example_inputs=inputs(2, 1))
    assert overwritten <= pruner.adapter.overwritten
    train_gates(model, pruner, [inputs(8, 10 + step) for step in range(3)])

    model.eval()
    randomize_gates(pruner, seed=2)
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    probe = inputs(4, 7)
    with torch.no_grad():
        assert (compact(probe) - model(probe)).abs().max() <= 1e-5 * max(1.0, float(model(probe).abs().max()))
    binary = {"channels": (pruner.deterministic_masks()["channels"] != 0).float()}
    assert count_parameters(compact) == int(pruner.cost.total(binary)[0]) == report.params_after
    assert report.params_after < report.params_before
    assert not any(STATE_ATTRIBUTE in n for n, _ in compact.named_parameters())

    save_pruned(compact, tmp_path / case)
    reloaded = load_pruned(tmp_path / case, model_factory=lambda: factory()).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(probe), compact(probe))


def _no_inplace(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


@pytest.mark.parametrize("case", ["resnet18_style", "mobilenet_v2_style", "sequential_cnn"])
def test_inplace_sites_get_the_same_gradients_as_out_of_place_ones(case):
    """The mask op at an overwritten site (saving its input) gives the gradients the lean op gives where the same
    network runs its activations out of place: gates and weights alike, for the same sampled masks."""
    factory, inputs, _ = CASES[case]
    grads = []
    for inplace in (True, False):
        model = _build(factory, inputs, seed=0)
        model = model if inplace else _no_inplace(model)
        pruner = lp.attach(model, METHODS["l0"](), example_inputs=inputs(2, 1))
        assert bool(pruner.adapter.overwritten) == (inplace or case == "resnet18_style")  # `out += identity` stays
        randomize_gates(pruner, seed=4, std=1.0)
        pruner.sample_seed = 5
        model.train()
        model(inputs(8, 3)).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("log_alpha" in n for n in grads[0])
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-6), name


def test_container_models_keep_their_output_and_indexing_until_detach():
    """The pruning state runs as the identity inside a container's forward; it stays a registered child (in
    ``state_dict``, ``parameters()``, ``.to()``) and leaves with ``detach()``."""
    model = _build(sequential_cnn, _images(8), seed=0)
    probe = _images(8)(2, 3)
    with torch.no_grad():
        dense = model(probe)
    n_layers = len(model)
    pruner = lp.attach(model, METHODS["l0"](), example_inputs=probe)
    pruner.set_phase("dense")
    with torch.no_grad():
        assert torch.equal(model(probe), dense)
    assert len(model) == n_layers + 1 and model[-1] is pruner.state
    assert any(k.startswith(f"{STATE_ATTRIBUTE}.") for k in model.state_dict())
    own = {id(p) for p in pruner.state.parameters()}
    assert own and own <= {id(p) for p in model.parameters()}
    model.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in pruner.state.parameters())
    model.to(torch.float32)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(probe), dense)
    pruner.detach()
    assert len(model) == n_layers and STATE_ATTRIBUTE not in dict(model.named_children())
