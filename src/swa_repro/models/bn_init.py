"""BatchNorm weight initialisation as the authors' PyTorch (0.3/0.4) did it.

Up to PyTorch 1.1 a BatchNorm layer drew its weight from U(0, 1) (bias 0); since 1.2 the weight
starts at 1. The authors' WideResNet28x10 and VGG16BN leave BN at the default of their PyTorch,
so their configs ask for "uniform" (pytorch/pytorch#12259 made the change); "ones" gives
today's default.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_WEIGHT_INITS = ("uniform", "ones")


def check_bn_weight_init(bn_weight_init: str) -> None:
    """ValueError unless `bn_weight_init` is one of BN_WEIGHT_INITS."""
    if bn_weight_init not in BN_WEIGHT_INITS:
        raise ValueError(
            f"bn_weight_init must be one of {', '.join(BN_WEIGHT_INITS)}, got {bn_weight_init!r}"
        )


def init_bn_weights(model: nn.Module, bn_weight_init: str) -> None:
    """Draw every BN weight from U(0, 1) for "uniform" (the module order fixes the draws)."""
    if bn_weight_init == "uniform":
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                nn.init.uniform_(m.weight)
