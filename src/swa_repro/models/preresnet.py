"""Bottleneck pre-activation ResNet for CIFAR, as in the SWA authors' code (timgaripov/swa).

Module names (``conv1``, ``layerN``, ``downsample.0``, ``bn``, ``fc``) follow that code so
its checkpoints load. Only bottleneck depths (9n+2, >= 44) are supported: the paper uses
PreResNet-110 and -164, both of which are bottleneck networks there.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """Pre-activation bottleneck; the projection shortcut sees the raw input, not BN-ReLU(x)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        # Wrapped in a Sequential only to keep upstream's "downsample.0.weight" key.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """Stem conv (no BN after it: the first block pre-activates), three stages, BN-ReLU head."""

    def __init__(self, num_classes: int, depth: int) -> None:
        super().__init__()
        if depth < 44 or (depth - 2) % 9 != 0:
            raise ValueError(f"PreResNet depth must be 9n+2 and >= 44 (bottleneck), got {depth}")
        n = (depth - 2) // 9
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * Bottleneck.expansion)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64 * Bottleneck.expansion, num_classes)
        # He init with fan-out, as upstream; BN (weight 1, bias 0) and Linear keep PyTorch defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.avgpool(F.relu(self.bn(x)))
        return self.fc(x.flatten(1))
