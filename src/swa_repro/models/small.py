"""Small pre-activation residual CNN with BatchNorm for the offline CPU demo and tests.

It has BatchNorm on purpose: SWA must recompute BN statistics after averaging, and the demo
and tests need a cheap model that exercises that path. `small_cnn_nobn` (BN layers replaced by
identities) is for the distributed tests: with per-GPU BatchNorm in training a run depends on
the GPU count, without BN a 2-process run must equal a single-process one. The stem conv has stride 2 (stages run
at 16x16, 8x8, 4x4): running BN-ReLU and convs at 32x32 costs ~2.5x more CPU time.
"""

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv x2 with a 1x1 projection of the raw input when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm=nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn1 = norm(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


class SmallCNN(nn.Module):
    """Stride-2 stem, three one-block stages (16/32/64, strides 1/2/2), BN-ReLU-avgpool-Linear."""

    def __init__(self, num_classes: int, batch_norm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else (lambda _: nn.Identity())
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1, bias=False)
        self.layer1 = PreActBlock(16, 16, stride=1, norm=norm)
        self.layer2 = PreActBlock(16, 32, stride=2, norm=norm)
        self.layer3 = PreActBlock(32, 64, stride=2, norm=norm)
        self.bn = norm(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(x.flatten(1))
