"""Model zoo: the SWA paper's CIFAR architectures plus a small CPU model for demos and tests."""

from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .preresnet import PreResNet
from .small import SmallCNN
from .vgg import VGG16
from .wide_resnet import WideResNet

_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "vgg16": lambda c: VGG16(c, batch_norm=False),
    "vgg16bn": lambda c: VGG16(c, batch_norm=True),
    "preresnet110": lambda c: PreResNet(c, depth=110),
    "preresnet164": lambda c: PreResNet(c, depth=164),
    "wrn28x10": lambda c: WideResNet(c, depth=28, widen_factor=10),
    "small_cnn": SmallCNN,
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised model by name; fails loudly on typos and bad class counts."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _BUILDERS[name](num_classes)


def has_batchnorm(model: nn.Module) -> bool:
    """True if the model has BN layers, i.e. SWA must recompute BN statistics after averaging."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODEL_NAMES", "build_model", "count_parameters", "has_batchnorm"]
