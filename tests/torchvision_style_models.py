"""CNNs written the way people write them (torchvision style, our own code at tiny width): ``inplace=True``
activations right after masked BatchNorms, ``out += identity`` residual adds, strided 1×1 downsample shortcuts,
MobileNetV2 inverted residuals with depthwise convs and ReLU6; plus models that *are* containers
(``nn.Sequential``, and ``nn.ModuleList`` / ``nn.ModuleDict`` subclasses whose forward iterates themselves)."""

from __future__ import annotations

import torch
from torch import nn


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """ResNet-18 basic block: 3×3 conv-BN-ReLU(inplace) → 3×3 conv-BN, ``out += identity`` (a strided 1×1
    conv-BN shortcut when the shape changes), ReLU(inplace)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place on the masked BatchNorm output
        return self.relu(out)


class ResNetSmall(nn.Module):
    """ResNet-18 layout (stem, 4 stages of 2 basic blocks, strides 1-2-2-2) at width ``width``, for 16×16 inputs."""

    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages, c_in = [], width
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expansion conv-BN-ReLU6(inplace) (absent at ratio 1) → 3×3 depthwise conv-BN-ReLU6
    (inplace) → 1×1 linear projection conv-BN; ``x + block(x)`` when stride 1 and widths match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Small(nn.Module):
    """MobileNetV2 layout (stem conv-BN-ReLU6, inverted residual stages ``(expand, c, n, stride)``, 1×1 head
    conv, Hardswish(inplace) as in MobileNetV3's head, dropout, linear classifier) at tiny width."""

    SETTINGS = ((1, 4, 1, 1), (6, 6, 2, 2), (6, 8, 2, 1), (6, 12, 1, 2))

    def __init__(self, classes: int = 5, last: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)]
        c_in = 8
        for expand, c, n, stride in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, stride if i == 0 else 1, expand))
                c_in = c
        layers += [nn.Conv2d(c_in, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def sequential_cnn(classes: int = 5) -> nn.Sequential:
    """A CNN that *is* an ``nn.Sequential`` (conv-BN-ReLU(inplace) ×2, pool, flatten, linear)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        *_bn_relu(8),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
        *_bn_relu(12),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, classes),
    )


def sequential_mlp(d_in: int = 10, hidden: int = 16, d_out: int = 3) -> nn.Sequential:
    """An MLP that *is* an ``nn.Sequential`` (Linear-ReLU(inplace)-Linear-ReLU(inplace)-Linear)."""
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, d_out),
    )


class ListMLP(nn.ModuleList):
    """A model that *is* an ``nn.ModuleList`` and runs its entries in order."""

    def __init__(self, d_in: int = 10, hidden: int = 16, d_out: int = 3) -> None:
        super().__init__([nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


class DictMLP(nn.ModuleDict):
    """A model that *is* an ``nn.ModuleDict`` and runs its values in order."""

    def __init__(self, d_in: int = 10, hidden: int = 16, d_out: int = 3) -> None:
        super().__init__({"fc1": nn.Linear(d_in, hidden), "act": nn.GELU(), "fc2": nn.Linear(hidden, d_out)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = layer(x)
        return x


class ChildrenMLP(nn.Module):
    """A plain module whose forward runs ``self.children()`` in order."""

    def __init__(self, d_in: int = 10, hidden: int = 16, d_out: int = 3) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


def calibrated(model: nn.Module, inputs: torch.Tensor, seed: int = 0) -> nn.Module:
    """``model`` with random BatchNorm affine params and statistics from a few random batches, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            module.momentum = None
        model.train()
        for _ in range(3):
            model(torch.randn(inputs.shape, generator=gen))
        for module in norms:
            module.momentum = 0.1
    return model.eval()


def train_gates(model: nn.Module, pruner, batches) -> None:
    """A few SGD steps on ``(model(x)² + penalty)`` through the pruner's groups; asserts that the gates moved (the
    backward ran through every mask site, in-place activations included)."""
    model.train()
    optimizer = torch.optim.SGD(pruner.param_groups(lr=0.01), lr=0.01)
    pruner.hook_optimizer(optimizer)
    before = {n: p.detach().clone() for n, p in pruner.gates.named_parameters()}
    for x in batches:
        loss = model(x).square().mean() + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in pruner.gates.named_parameters()), "gates never trained"
