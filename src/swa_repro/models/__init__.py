"""Model zoo: the SWA paper's CIFAR architectures, torchvision's ImageNet models (Table 2), and
a small CPU model for demos and tests."""

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
    "small_cnn_nobn": lambda c: SmallCNN(c, batch_norm=False),
}

# Table 2: fine-tuned from torchvision's pretrained weights (the paper's SGD column).
TORCHVISION_MODELS = ("densenet161", "resnet152", "resnet50")

MODEL_NAMES: tuple[str, ...] = tuple(sorted((*_BUILDERS, *TORCHVISION_MODELS)))


def build_model(name: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Build a model by name; fails loudly on typos and bad class counts.

    `pretrained` names torchvision weights of a TORCHVISION_MODELS entry (e.g. "IMAGENET1K_V1",
    downloaded by torchvision into $TORCH_HOME on first use); None: freshly initialised.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in TORCHVISION_MODELS:
        import torchvision

        return torchvision.models.get_model(name, weights=pretrained, num_classes=num_classes)
    if pretrained is not None:
        raise ValueError(f"model {name!r} has no pretrained weights (pretrained={pretrained!r})")
    return _BUILDERS[name](num_classes)


def has_batchnorm(model: nn.Module) -> bool:
    """True if the model has BN layers, i.e. SWA must recompute BN statistics after averaging."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODEL_NAMES", "TORCHVISION_MODELS", "build_model", "count_parameters", "has_batchnorm"]
