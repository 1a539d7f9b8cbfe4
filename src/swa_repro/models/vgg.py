"""VGG16 / VGG16-BN for 32x32 inputs, as in the SWA authors' code (timgaripov/swa).

Module names (``features``, ``classifier``) follow that code so its checkpoints load.
"""

import math

import torch
from torch import nn

from swa_repro.models.bn_init import check_bn_weight_init, init_bn_weights

_CFG_16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _make_features(batch_norm: bool) -> nn.Sequential:
    """Conv stack; convs keep their bias even with BN, as upstream does (it changes the count)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in _CFG_16:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """Five pooling stages take 32x32 down to 1x1, so the classifier sees 512 features."""

    def __init__(
        self, num_classes: int, batch_norm: bool = False, bn_weight_init: str = "ones"
    ) -> None:
        super().__init__()
        check_bn_weight_init(bn_weight_init)
        self.features = _make_features(batch_norm)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        # He init with fan-out (k*k*out_channels), zero bias, as upstream; Linear/BN keep defaults
        # (BN: the authors' PyTorch drew weights from U(0, 1): bn_weight_init="uniform").
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
        init_bn_weights(self, bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
