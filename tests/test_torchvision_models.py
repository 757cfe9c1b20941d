"""Issue #14, class 4: the real torchvision definitions (ResNet-18/50, MobileNetV2; random weights, no download) as
users write them: ``nn.ReLU(inplace=True)`` after masked BatchNorms, ``out += identity`` residual adds, ``ReLU6``,
and a torchvision backbone cut into an ``nn.Sequential`` feature extractor. Each goes through attach → training
steps → export → compact equals gated → exact parameter count → save/load round trip, and once through the
Lightning callback."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_gates
from lightning_helpers import trainer
from torch import nn
from torchvision_import import import_torchvision
from torchvision_style_models import calibrated, train_gates

import lightning_prune as lp
from lightning_prune.export.history import load_pruned, save_pruned
from lightning_prune.export.report import count_parameters
from lightning_prune.pruner import STATE_ATTRIBUTE

torchvision = import_torchvision()
models = torchvision.models


def _images(batch: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _resnet18_features() -> nn.Module:
    """A torchvision backbone cut into a Sequential feature extractor plus a new head (a common fine-tuning idiom)."""
    backbone = models.resnet18(num_classes=10)
    return nn.Sequential(*list(backbone.children())[:-1], nn.Flatten(), nn.Linear(512, 7))


# name → (factory, mask points whose output is overwritten in place: at least)
CASES = {
    "resnet18": (lambda: models.resnet18(num_classes=10), {"bn1", "layer1.0.bn1", "layer1.0.bn2", "layer4.1.bn2"}),
    "resnet50": (lambda: models.resnet50(num_classes=10), {"bn1", "layer1.0.bn2", "layer1.0.bn3", "layer4.2.bn3"}),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10), {"features.0.1", "features.1.conv.0.1"}),
    "resnet18_sequential": (_resnet18_features, {"1", "4.0.bn1"}),
}
METHODS = {
    "l0": lambda: lp.L0Config(structures=("channels",), target_sparsity=0.3, gate_lr=0.1),  # memory-lean mask op
    "polarization": lambda: lp.PolarizationConfig(structures=("channels",), target_sparsity=0.3),  # plain product
}


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    factory, _ = CASES[name]
    return calibrated(factory(), _images(4, seed + 100), seed)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", list(CASES))
def test_torchvision_model_trains_and_exports_exactly(tmp_path, case, method):
    model = _build(case)
    assert any(getattr(m, "inplace", False) for m in model.modules()), "the definition uses in-place activations"
    pruner = lp.attach(model, METHODS[method](), example_inputs=_images(2, 1))
    assert CASES[case][1] <= pruner.adapter.overwritten
    # a handful of cost terms per layer, never one per channel pair (ResNet-50's 26M pairs took minutes to attach)
    assert len(pruner.cost.terms) <= 8 * sum(1 for _ in model.modules())
    train_gates(model, pruner, [_images(4, 10 + step) for step in range(2)])

    model.eval()
    randomize_gates(pruner, seed=2)
    for gate in pruner.gates.values():
        gate.post_step_()  # gate parameters inside their trained range (scale gates: γ in [0, 1])
    compact = pruner.export()
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    probe = _images(3, 7)
    with torch.no_grad():
        gated = model(probe)
        assert (compact(probe) - gated).abs().max() <= 1e-4 * max(1.0, float(gated.abs().max()))
    binary = {"channels": (pruner.deterministic_masks()["channels"] != 0).float()}
    assert count_parameters(compact) == int(pruner.cost.total(binary)[0]) == report.params_after
    assert report.params_after < report.params_before
    assert not any(STATE_ATTRIBUTE in n for n, _ in compact.named_parameters())

    save_pruned(compact, tmp_path / case)
    reloaded = load_pruned(tmp_path / case, model_factory=CASES[case][0]).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(probe), compact(probe))


def test_lightning_callback_without_example_inputs_says_how_to_trace_a_cnn():
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = models.resnet18(num_classes=10)

    callback = lp.PruningCallback(lp.L0Config(structures=("channels",)), plot=False)
    with pytest.raises(lp.UnsupportedModelError, match=r"PruningCallback\(config, example_inputs=\.\.\.\)"):
        callback.attach(Classifier())


def test_torchvision_resnet18_with_the_lightning_callback(tmp_path):
    """The user's unchanged LightningModule around a torchvision ResNet-18: dense warm-up, pruning, frozen masks,
    export of a smaller model that computes what the gated model computed."""
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = models.resnet18(num_classes=10)  # torchvision's own initialisation

        def training_step(self, batch, batch_idx):
            images, labels = batch
            return nn.functional.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.001, momentum=0.9)

    images = _images(24, 3)
    labels = torch.arange(24) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    callback = lp.PruningCallback(
        lp.L0Config(structures=("channels",), target_sparsity=0.4, warmup_steps=2, gate_lr=0.5),
        export_dir=tmp_path / "compact",
        dense_steps=1,
        freeze_after_steps=5,
        plot=False,
        log_stats=False,
        prog_bar=False,
        example_inputs=_images(2, 1),
    )
    module = Classifier()
    trainer(6, [callback]).fit(module, loader)
    report = callback.pruner.last_report
    assert report.params_after < report.params_before
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    directory = tmp_path / "compact"
    with pytest.raises(lp.PruningConfigError, match="model_factory"):
        lp.load_compact(directory)
    compact = lp.load_compact(directory, model_factory=lambda: models.resnet18(num_classes=10)).eval()
    assert compact.lightning_prune_report.params_after == report.params_after  # the report travels with it
    module.model.eval()
    probe = _images(2, 9)
    with torch.no_grad():
        gated = module.model(probe)
        assert (compact(probe) - gated).abs().max() <= 1e-4 * max(1.0, float(gated.abs().max()))
    assert count_parameters(compact) == report.params_after


def test_saved_cnn_export_verifies_itself(tmp_path):
    """save_compact / load_compact for a traced CNN: manifest and stored probe, as for transformers exports."""
    model = _build("mobilenet_v2")
    pruner = lp.attach(model, METHODS["l0"](), example_inputs=_images(2, 1))
    model.eval()
    randomize_gates(pruner, seed=3)
    directory = pruner.save_compact(tmp_path / "cnn")
    factory = CASES["mobilenet_v2"][0]
    loaded = lp.load_compact(directory, model_factory=factory)
    probe = _images(2, 4)
    with torch.no_grad():
        assert (loaded(probe) - model(probe)).abs().max() <= 1e-4 * max(1.0, float(model(probe).abs().max()))
    history = directory / "pruning_history.json"
    history.write_text(history.read_text().replace("]]", "]] ", 1))
    with pytest.raises(lp.CorruptExportError, match="pruning_history.json"):
        lp.load_compact(directory, model_factory=factory)


#: More of the zoo, one method each: SE blocks (EfficientNet, MobileNetV3), concatenation (DenseNet), grouped convs
#: (RegNet, ResNeXt), LayerNorm'd channels left dense (ConvNeXt), modules that check their state-dict version on load
#: (MNASNet), fire modules (SqueezeNet), a wide classifier (VGG).
ZOO = {
    "vgg11_bn": 64,
    "efficientnet_b0": 32,
    "densenet121": 32,
    "regnet_x_400mf": 32,
    "mnasnet0_5": 32,
    "squeezenet1_0": 64,
    "convnext_tiny": 32,
    "resnext50_32x4d": 32,
    "mobilenet_v3_small": 32,
}


@pytest.mark.parametrize("name", list(ZOO))
def test_torchvision_zoo_exports_and_reloads_exactly(tmp_path, name):
    size = ZOO[name]
    torch.manual_seed(0)
    factory = getattr(models, name)
    model = factory(num_classes=10)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model = calibrated(model, _images(4, 100, size), 0)
    pruner = lp.attach(model, METHODS["l0"](), example_inputs=_images(2, 1, size))
    model.train()
    (model(_images(4, 2, size)).square().mean() + pruner.penalty()).backward()
    model.eval()
    randomize_gates(pruner, seed=2)
    directory = pruner.save_compact(tmp_path / name)
    report = pruner.last_report
    assert report.max_abs_diff <= 1e-4 * report.reference_scale and report.params_after < report.params_before
    loaded = lp.load_compact(directory, model_factory=lambda: factory(num_classes=10))
    probe = _images(2, 5, size)
    with torch.no_grad():
        gated = model(probe)
        assert (loaded(probe) - gated).abs().max() <= 1e-4 * max(1.0, float(gated.abs().max()))
    assert count_parameters(loaded) == report.params_after


def test_a_model_torch_pruning_cannot_trace_is_refused_at_attach_with_the_cause():
    """ShuffleNetV2's channel shuffle (a view + transpose) breaks torch-pruning's index mapping."""
    model = models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(lp.UnsupportedModelError, match=r"could not trace .*ShuffleNetV2.*channel shuffles"):
        lp.attach(model, METHODS["l0"](), example_inputs=_images(2, 1))
