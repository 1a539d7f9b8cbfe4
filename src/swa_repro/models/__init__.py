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

# Models whose authors' code leaves BatchNorm at PyTorch's default init, which was
# weight ~ U(0, 1) up to PyTorch 1.1 (the authors ran 0.3/0.4) and is weight = 1 since.
DEFAULT_BN_INIT_MODELS = ("vgg16bn", "wrn28x10")
BN_WEIGHT_INITS = ("uniform", "ones")

# Table 2: fine-tuned from torchvision's pretrained weights (the paper's SGD column).
TORCHVISION_MODELS = ("densenet161", "resnet152", "resnet50")

MODEL_NAMES: tuple[str, ...] = tuple(sorted((*_BUILDERS, *TORCHVISION_MODELS)))


def check_bn_weight_init(name: str, bn_weight_init: str | None) -> None:
    """ValueError unless `bn_weight_init` is None or a valid choice for model `name`."""
    if bn_weight_init is not None and name not in DEFAULT_BN_INIT_MODELS:
        raise ValueError(
            f"bn_weight_init applies to {', '.join(DEFAULT_BN_INIT_MODELS)} only, not {name!r}"
        )
    if bn_weight_init not in (None, *BN_WEIGHT_INITS):
        raise ValueError(
            f"bn_weight_init must be one of {', '.join(BN_WEIGHT_INITS)}, got {bn_weight_init!r}"
        )


def build_model(
    name: str, num_classes: int, pretrained: str | None = None, bn_weight_init: str | None = None
) -> nn.Module:
    """Build a model by name; fails loudly on typos and bad class counts.

    `pretrained` names torchvision weights of a TORCHVISION_MODELS entry (e.g. "IMAGENET1K_V1",
    downloaded by torchvision into $TORCH_HOME on first use); None: freshly initialised.
    `bn_weight_init` (DEFAULT_BN_INIT_MODELS only): "uniform" (None: the authors' PyTorch
    default, BN weight ~ U(0, 1)) or "ones" (today's PyTorch default).
    """
    check_bn_weight_init(name, bn_weight_init)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name in TORCHVISION_MODELS:
        import torchvision

        return torchvision.models.get_model(name, weights=pretrained, num_classes=num_classes)
    if pretrained is not None:
        raise ValueError(f"model {name!r} has no pretrained weights (pretrained={pretrained!r})")
    model = _BUILDERS[name](num_classes)
    if name in DEFAULT_BN_INIT_MODELS and bn_weight_init != "ones":
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                nn.init.uniform_(m.weight)  # PyTorch <= 1.1's BN init: U(0, 1), bias 0
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """True if the model has BN layers, i.e. SWA must recompute BN statistics after averaging."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "BN_WEIGHT_INITS",
    "DEFAULT_BN_INIT_MODELS",
    "MODEL_NAMES",
    "TORCHVISION_MODELS",
    "build_model",
    "check_bn_weight_init",
    "count_parameters",
    "has_batchnorm",
]
