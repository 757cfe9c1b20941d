"""Tiny plain-PyTorch models for the dependency_graph adapter tests: a ResNet-style CNN with residual adds
and depthwise convs, and an MLP. Seeded, CPU-fast, with non-trivial BatchNorm statistics so that folding
masks into the wrong place shows up in the equivalence checks."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Conv-BN-ReLU → depthwise conv-BN-ReLU → 1×1 conv-BN, added to the input (residual-coupled channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.dw(h)))
        return torch.relu(x + self.bn3(self.conv2(h)))


class TinyResNet(nn.Module):
    """stem(3→8) → Block(8) → strided conv with bias, no norm (8→12) → Block(12) → global pool → Linear(12→5)."""

    def __init__(self, classes: int = 5, pool: bool = True) -> None:
        super().__init__()
        self.pool = pool  # False: flatten the (12, 4, 4) features of 8×8 inputs (keeps spatial detail)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8)
        self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.block2 = Block(12)
        self.fc = nn.Linear(12 if pool else 12 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block1(x)
        x = self.block2(torch.relu(self.down(x)))
        return self.fc(x.mean((2, 3)) if self.pool else x.flatten(1))  # (B, classes)


class TinyMLP(nn.Module):
    """Linear-LayerNorm-GELU → Linear-ReLU → Linear: a custom MLP with a norm and a bare hidden layer."""

    def __init__(self, d_in: int = 10, hidden: int = 16, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.norm(self.fc1(x)))
        return self.head(torch.relu(self.fc2(h)))


def tiny_resnet(seed: int = 0, classes: int = 5, pool: bool = True) -> TinyResNet:
    """A seeded :class:`TinyResNet` whose BatchNorms have random statistics and affine params."""
    torch.manual_seed(seed)
    model = TinyResNet(classes, pool)
    gen = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in norms:
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):  # statistics from data, so no channel is dead after its ReLU
            model(torch.randn(32, 3, 8, 8, generator=gen))
        for module in norms:
            module.momentum = 0.1
    return model.eval()


def tiny_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP().eval()


def image_batch(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
