"""Model zoo: the SWA paper's CIFAR architectures, torchvision's ImageNet models (Table 2), a
small CPU model for demos and tests; any other network through its config's `_target_`.

A model config (conf/model/<name>.yaml) names the class or function that builds the network
in `_target_` and its arguments; `name` (the run directories' model part), `mean` and `std`
(the input normalisation) are about the run, not the network, and are not passed on:

    _target_: swa_repro.models.PreResNet
    name: preresnet164
    depth: 164
    num_classes: ${data.num_classes}

`instantiate_model(cfg.model)` builds it with Hydra's instantiate; `check_model_config` checks,
without building anything, that the target imports and takes those arguments.
"""

from __future__ import annotations

import importlib
import inspect

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from swa_repro import REPO_ROOT
from swa_repro.models.bn_init import BN_WEIGHT_INITS
from swa_repro.models.preresnet import PreResNet
from swa_repro.models.small import SmallCNN
from swa_repro.models.vgg import VGG16
from swa_repro.models.wide_resnet import WideResNet

MODEL_CONF_DIR = REPO_ROOT / "conf" / "model"
# The built-in networks: every model config with a target (conf/model/custom.yaml has none: yours).
MODEL_NAMES: tuple[str, ...] = tuple(
    sorted(p.stem for p in MODEL_CONF_DIR.glob("*.yaml") if "_target_: ???" not in p.read_text())
)
RUN_KEYS = ("name", "mean", "std")  # about the run, not arguments of the network

# Models whose authors' code leaves BatchNorm at PyTorch's default init (models.bn_init).
DEFAULT_BN_INIT_MODELS = ("vgg16bn", "wrn28x10")
# Table 2: fine-tuned from torchvision's pretrained weights (the paper's SGD column).
TORCHVISION_MODELS = ("densenet161", "resnet152", "resnet50")


class ModelConfigError(ValueError):
    """A model config whose target cannot be imported or does not take its arguments."""


def torchvision_model(num_classes: int, arch: str, pretrained: str | None = None) -> nn.Module:
    """torchvision's `arch`; `pretrained` names its weights (e.g. IMAGENET1K_V1, downloaded by
    torchvision into $TORCH_HOME on first use), None a fresh initialisation."""
    import torchvision

    return torchvision.models.get_model(arch, weights=pretrained, num_classes=num_classes)


def model_arguments(model_cfg) -> tuple[str, dict]:
    """(the _target_, its keyword arguments) of a model config."""
    try:
        node = (
            OmegaConf.to_container(model_cfg, resolve=True)
            if isinstance(model_cfg, DictConfig)
            else dict(model_cfg)
        )
    except OmegaConfBaseException as exc:  # e.g. model=custom without model._target_=...
        raise ModelConfigError(f"model: {one_line(exc)}") from None
    if node.get("_target_") in (None, "???"):
        raise ModelConfigError(
            "model._target_ is not set: name the class or function that builds the network, "
            "e.g. model._target_=mypkg.nets.Net"
        )
    args = {k: v for k, v in node.items() if k not in RUN_KEYS and k != "_target_"}
    return node["_target_"], args


def locate(path: str):
    """The object a dotted path names (a module's attribute, or an attribute of one: a.b.C.f)."""
    module_path, _, name = path.rpartition(".")
    if not module_path or not name:
        raise ValueError(f"{path!r} is not a dotted path such as mypkg.nets.Net")
    try:
        return getattr(importlib.import_module(module_path), name)
    except ModuleNotFoundError as exc:
        if (
            exc.name is None
            or not module_path.startswith(exc.name)
            or exc.name == module_path.split(".")[0]
        ):
            raise
        return getattr(locate(module_path), name)


def check_model_config(model_cfg) -> None:
    """ModelConfigError (one line) unless the target imports and accepts the arguments."""
    target, args = model_arguments(model_cfg)
    try:
        builder = locate(target)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelConfigError(
            f"model._target_={target} cannot be imported ({one_line(exc)})"
        ) from None
    try:
        inspect.signature(builder).bind(**args)
    except TypeError as exc:
        raise ModelConfigError(
            f"model._target_={target} does not take these arguments: {exc}"
        ) from None
    except ValueError:  # a builder without an inspectable signature: instantiate will tell
        pass


def instantiate_model(model_cfg, **overrides) -> nn.Module:
    """The network a model config describes (keyword `overrides` replace its arguments)."""
    target, args = model_arguments(model_cfg)
    try:
        return instantiate({"_target_": target, **args, **overrides})
    except InstantiationException as exc:
        raise ModelConfigError(
            f"model._target_={target}: {one_line(exc.__cause__ or exc)}"
        ) from None


def build_model(
    name: str, num_classes: int, pretrained: str | None = None, bn_weight_init: str | None = None
) -> nn.Module:
    """The built-in model `name` from conf/model/<name>.yaml, for `num_classes` classes.

    `pretrained` (torchvision models) names weights to load, None: freshly initialised;
    `bn_weight_init` (DEFAULT_BN_INIT_MODELS only) overrides the config's "uniform"."""
    check_bn_weight_init_applies(name, bn_weight_init)
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model_cfg = OmegaConf.load(MODEL_CONF_DIR / f"{name}.yaml")
    model_cfg.num_classes = num_classes
    overrides = {} if bn_weight_init is None else {"bn_weight_init": bn_weight_init}
    if name in TORCHVISION_MODELS:
        overrides["pretrained"] = pretrained
    elif pretrained is not None:
        raise ValueError(f"model {name!r} has no pretrained weights (pretrained={pretrained!r})")
    return instantiate_model(model_cfg, **overrides)


def check_bn_weight_init_applies(name: str, bn_weight_init: str | None) -> None:
    """ValueError unless `bn_weight_init` is None or a valid choice for built-in model `name`."""
    if bn_weight_init is not None and name not in DEFAULT_BN_INIT_MODELS:
        raise ValueError(
            f"bn_weight_init applies to {', '.join(DEFAULT_BN_INIT_MODELS)} only, not {name!r}"
        )
    if bn_weight_init not in (None, *BN_WEIGHT_INITS):
        raise ValueError(
            f"bn_weight_init must be one of {', '.join(BN_WEIGHT_INITS)}, got {bn_weight_init!r}"
        )


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def has_batchnorm(model: nn.Module) -> bool:
    """True if the model has BN layers, i.e. SWA must recompute BN statistics after averaging."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "DEFAULT_BN_INIT_MODELS",
    "MODEL_NAMES",
    "PreResNet",
    "SmallCNN",
    "TORCHVISION_MODELS",
    "VGG16",
    "WideResNet",
    "build_model",
    "check_model_config",
    "count_parameters",
    "has_batchnorm",
    "instantiate_model",
    "torchvision_model",
]
