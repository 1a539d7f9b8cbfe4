"""WideResNet-28-10 as in the SWA authors' code (timgaripov/swa), quirks included.

Upstream differs from the WRN paper in ways that change results, so they are kept: the
stride sits on the second conv of a block, convs and shortcuts have biases, the head BN
uses momentum 0.9, and every layer keeps PyTorch's default init (its `conv_init` is never
called) as of the authors' PyTorch 0.3/0.4: conv and linear bounds are today's, but BN weights
were drawn from U(0, 1), which build_model restores (`bn_weight_init`). Module names follow
upstream so its checkpoints load.
"""

import torch
import torch.nn.functional as F
from torch import nn

from swa_repro.models.bn_init import check_bn_weight_init, init_bn_weights


class WideBasic(nn.Module):
    """Pre-activation basic block with dropout between the two convs."""

    def __init__(self, in_planes: int, planes: int, dropout_rate: float, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        # An empty Sequential is the identity; a projection keeps upstream's "shortcut.0" key.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """Depth 6n+4, three stages of n blocks with widths 16k/32k/64k."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout_rate: float = 0.0,
        bn_weight_init: str = "ones",
    ) -> None:
        super().__init__()
        check_bn_weight_init(bn_weight_init)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._wide_layer(widths[1], n, dropout_rate, stride=1)
        self.layer2 = self._wide_layer(widths[2], n, dropout_rate, stride=2)
        self.layer3 = self._wide_layer(widths[3], n, dropout_rate, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.9)
        self.linear = nn.Linear(widths[3], num_classes)
        init_bn_weights(self, bn_weight_init)

    def _wide_layer(
        self, planes: int, blocks: int, dropout_rate: float, stride: int
    ) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout_rate, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.linear(out.flatten(1))
