"""Reject a bad run configuration before any data is loaded or any epoch runs.

Each key's rule is one line of RULES (what the value must be, worded for the message), checked
in order; the rules that relate several keys follow in small functions. Every failure is a
ConfigError of one line naming the key, the rule and the value given.

Why a table and not Hydra structured configs (typed dataclasses in the ConfigStore): the
groups data and schedule take different keys per option, which a dataclass schema cannot
express without unions OmegaConf lacks; the model node must stay open for any network's
arguments; ranges (lr > 0, momentum < 1, epochs in 1..) need code anyway; and OmegaConf's type
errors span several lines. The table is as short as a schema and its errors stay one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import ListConfig, OmegaConf

from swa_repro.averaging import is_averaging_epoch
from swa_repro.data import DATASET_NAMES
from swa_repro.models import ModelConfigError, check_model_config
from swa_repro.models.bn_init import BN_WEIGHT_INITS

METHOD_NAMES = ("sgd", "swa")
SCHEDULE_NAMES = ("constant", "cyclic", "paper")
LOGGER_NAMES = ("none", "wandb")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR_TRAIN_IMAGES = 50_000


class ConfigError(ValueError):
    """A configuration mistake; its message is one line."""


def is_number(value) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


Rule = tuple[str, Callable[[object], bool]]  # (what the value must be, test)
POSITIVE_INT: Rule = ("a positive integer", lambda v: _is_int(v) and v >= 1)
INTEGER: Rule = ("an integer", _is_int)
BOOLEAN: Rule = ("true or false", lambda v: isinstance(v, bool))
POSITIVE: Rule = ("a positive number", lambda v: is_number(v) and math.isfinite(v) and v > 0)
NON_NEGATIVE: Rule = ("a number >= 0", lambda v: is_number(v) and math.isfinite(v) and v >= 0)
MOMENTUM: Rule = ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1)
FRACTION: Rule = ("a fraction in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1)
BN_INIT: Rule = (f"one of {', '.join(BN_WEIGHT_INITS)}", lambda v: v in BN_WEIGHT_INITS)
LIST: Rule = ("a list such as [1, 2]", lambda v: isinstance(v, ListConfig | list | tuple))
SCALE: Rule = ("a finite positive number", lambda v: is_number(v) and 0 < v < math.inf)


def one_of(*names: str) -> Rule:
    return (f"one of {', '.join(names)}", lambda v: v in names)


def at_least(minimum: int) -> Rule:
    return (f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum)


def optional(rule: Rule) -> Rule:
    return (f"{rule[0]} or null", lambda v: v is None or rule[1](v))


RULES: dict[str, Rule] = {
    "epochs": POSITIVE_INT,
    "budget": POSITIVE_INT,
    "seed": at_least(0),
    "optim.lr_init": POSITIVE,
    "optim.momentum": MOMENTUM,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.batch_size": POSITIVE_INT,
    "eval_every": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "eval_at_start": BOOLEAN,
    "eval_first_epoch": BOOLEAN,
    "bn_refresh_images": optional(POSITIVE_INT),
    "progress": BOOLEAN,
    "checkpoint.every": POSITIVE_INT,
    "checkpoint.keep_every": at_least(0),
    "checkpoint.keep_epochs": LIST,
    "method.budget_readings": LIST,
    "data.val_size": at_least(0),
    "ema.decays": LIST,
    "ema.eval": one_of("budgets", "every"),
    "swag.collect": BOOLEAN,
    "swag.low_rank": BOOLEAN,
    "swag.deviations_on_cpu": BOOLEAN,
}
SWAG_RULES = {
    "swag.max_rank": at_least(2),  # low-rank SWAG only: its 1 / sqrt(K - 1) needs K >= 2
    "swag.samples": POSITIVE_INT,
    "swag.scale": SCALE,
    "swag.scale_diag": SCALE,
}
SWA_RULES = {
    "method.swa_lr": POSITIVE,
    "method.swa_c_epochs": POSITIVE_INT,
    "method.swa_include_start": BOOLEAN,
}
SCHEDULE_RULES = {
    "constant": {"schedule.lr": POSITIVE},
    "cyclic": {
        "schedule.a1": POSITIVE,
        "schedule.a2": POSITIVE,
        "schedule.cycle_epochs": POSITIVE_INT,
    },
    "paper": {},
}
DATA_RULES = {
    "imagenet": {"data.num_classes": POSITIVE_INT, "data.image_size": POSITIVE_INT,
                 "data.resize": POSITIVE_INT, "data.workers": at_least(0)},
    "cifar": {"data.download": BOOLEAN},
    "synthetic": {"data.num_classes": at_least(2), "data.train_size": POSITIVE_INT,
                  "data.test_size": POSITIVE_INT, "data.seed": INTEGER, "data.signal": NON_NEGATIVE,
                  "data.distractor": NON_NEGATIVE, "data.noise": NON_NEGATIVE,
                  "data.label_noise": FRACTION},
}  # fmt: skip


def check(value, key: str, rule: Rule) -> None:
    """ConfigError "<key> must be <rule>, got <value>" unless `value` passes `rule`."""
    what, passes = rule
    if not passes(value):
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def check_rules(cfg, rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        check(OmegaConf.select(cfg, key), key, rule)


def check_values(values: dict, rules: dict[str, Rule]) -> None:
    """check() of each value given by its dotted key, in the order of `rules`."""
    for key, rule in rules.items():
        if key in values:
            check(values[key], key, rule)


def check_int(value, key: str, minimum: int = 1) -> None:
    """ConfigError naming `key` unless `value` is an integer >= minimum (a bool is not)."""
    check(value, key, POSITIVE_INT if minimum == 1 else at_least(minimum))


def check_one_of(value, valid: tuple[str, ...], key: str) -> None:
    """ConfigError naming `key` and the valid names unless `value` is one of them."""
    if value not in valid:
        raise ConfigError(f"unknown {key} '{value}'; valid names: {', '.join(sorted(valid))}")


def validate_config(cfg) -> None:
    """Raise ConfigError naming the first problem in a training config."""
    check_one_of(cfg.data.name, DATASET_NAMES, "data.name")
    check_one_of(cfg.method.name, METHOD_NAMES, "method.name")
    check_one_of(cfg.schedule.name, SCHEDULE_NAMES, "schedule.name")
    check_one_of(cfg.logger.name, LOGGER_NAMES, "logger.name")
    if cfg.logger.name == "wandb" and cfg.logger.mode is not None:
        check_one_of(cfg.logger.mode, ("disabled", "offline", "online"), "logger.mode")
    check_rules(cfg, RULES)
    _check_lists(cfg)
    if cfg.method.swa:
        check_rules(cfg, SWA_RULES)
        _check_swa_start(cfg)
    check_rules(cfg, SCHEDULE_RULES[cfg.schedule.name])
    _check_cycle(cfg)
    _check_data(cfg)
    check_ema_decays(cfg.ema.decays)
    swag = cfg.swag
    check_swag_settings(swag.max_rank, swag.samples, swag.scale, swag.scale_diag, swag.low_rank)
    _check_model(cfg)
    check_device(cfg.device)
    if cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise ConfigError(
            f"resume must be 'auto' or an existing checkpoint file, got {cfg.resume!r}"
        )


def _check_lists(cfg) -> None:
    for epoch in cfg.checkpoint.keep_epochs:
        if not _is_int(epoch) or not 1 <= epoch <= cfg.epochs:
            raise ConfigError(
                f"checkpoint.keep_epochs entries must be epochs in 1..{cfg.epochs}, got {epoch!r}; "
                "set checkpoint.keep_epochs=[] to clear the list"
            )
    for reading in cfg.method.budget_readings:
        check(reading, "method.budget_readings entries", POSITIVE)


def _check_swa_start(cfg) -> None:
    start, every = cfg.method.swa_start, cfg.method.swa_c_epochs
    if not is_number(start) or not 1 <= start <= cfg.epochs:
        raise ConfigError(f"method.swa_start must lie in 1..epochs={cfg.epochs}, got {start!r}")
    if not any(is_averaging_epoch(e, start, every) for e in range(cfg.epochs)):
        raise ConfigError(
            f"method.swa_start={start} with method.swa_c_epochs={every} never collects a model "
            f"within epochs={cfg.epochs}; use an integer swa_start"
        )


def _check_cycle(cfg) -> None:
    """With the cyclic schedule the average collects the models at cycle ends."""
    if cfg.schedule.name != "cyclic" or not cfg.method.swa:
        return
    cycle = cfg.schedule.cycle_epochs
    if cfg.method.swa_c_epochs != cycle or cfg.method.swa_start % cycle != 0:
        raise ConfigError(
            f"with schedule=cyclic the average must collect the models at cycle ends: set "
            f"method.swa_c_epochs={cycle} and method.swa_start to a multiple of {cycle}"
        )


def _check_data(cfg) -> None:
    data = cfg.data
    kind = "cifar" if data.name in CIFAR_CLASSES else data.name
    check_rules(cfg, DATA_RULES[kind])
    expected = CIFAR_CLASSES.get(data.name)
    if expected is not None and data.num_classes != expected:
        raise ConfigError(
            f"data.num_classes={data.num_classes} does not match {data.name} ({expected} classes)"
        )
    _check_val_size(cfg)
    if kind != "synthetic" and Path(data.root).expanduser().is_file():
        holds = "train/ and val/" if kind == "imagenet" else "the data"
        raise ConfigError(
            f"data.root={data.root} is a file; it must be the folder that holds {holds}"
        )


def _check_val_size(cfg) -> None:
    """The held-out split must leave at least one training batch; ImageNet has none."""
    held_out, name = cfg.data.val_size, cfg.data.name
    if held_out and name == "imagenet":
        raise ConfigError(
            "data.val_size is not available for imagenet (its val/ folder is the test set); "
            "set data.val_size=0"
        )
    train = cfg.data.train_size if name == "synthetic" else CIFAR_TRAIN_IMAGES
    if held_out and train - held_out < cfg.optim.batch_size:
        raise ConfigError(
            f"data.val_size={held_out} leaves {train - held_out} of {train} training images, "
            f"fewer than one batch (optim.batch_size={cfg.optim.batch_size})"
        )


def _check_model(cfg) -> None:
    """The network's target and arguments, its class count, BN init and pretrained weights."""
    model = cfg.model
    if "bn_weight_init" in model:
        check(model.bn_weight_init, "model.bn_weight_init", BN_INIT)
    classes = model.get("num_classes")
    if classes is not None and classes != cfg.data.num_classes:
        raise ConfigError(
            f"model.num_classes={classes} but the data have data.num_classes={cfg.data.num_classes}"
        )
    try:
        check_model_config(model)
    except ModelConfigError as exc:
        raise ConfigError(str(exc)) from None
    if model.get("pretrained") is not None:
        _check_pretrained(model.get("arch"), model.pretrained, cfg.data.num_classes)


def _check_pretrained(arch: str | None, weights: str, num_classes: int) -> None:
    """Pretrained weights must exist in torchvision for the architecture and fit the classes."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"model.pretrained is for torchvision models; {arch} has none") from None
    valid = [w.name for w in enum]
    if weights not in valid:
        raise ConfigError(
            f"unknown model.pretrained '{weights}' for {arch}; valid names: {', '.join(valid)}"
        )
    classes = len(enum[weights].meta["categories"])
    if num_classes != classes:
        raise ConfigError(
            f"model.pretrained={weights} has {classes} classes but data.num_classes={num_classes}"
        )


def check_device(device: str) -> None:
    """ConfigError unless `device` is auto, cpu, or a CUDA device this machine has."""
    if device in ("auto", "cpu"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cpu":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} requested but CUDA is not available; use device=cpu or auto"
        )
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={device} requested but this machine has {torch.cuda.device_count()} GPU(s)"
        )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_swag_settings(max_rank, samples, scale, scale_diag, low_rank: bool = True) -> None:
    """ConfigError naming the first bad `swag.*` key (max_rank matters only with low-rank SWAG:
    it needs K >= 2 deviations for its 1 / sqrt(K - 1))."""
    values = {"swag.samples": samples, "swag.scale": scale, "swag.scale_diag": scale_diag}
    if low_rank:
        values["swag.max_rank"] = max_rank
    check_values(values, SWAG_RULES)


def check_ema_decays(decays) -> None:
    """ConfigError unless `decays` (ema.decays) is a list of distinct numbers inside (0, 1)
    (an empty list: no EMA)."""
    check(decays, "ema.decays", LIST)
    for i, decay in enumerate(decays):
        if not is_number(decay) or not 0 < decay < 1:
            raise ConfigError(f"ema.decays entries must lie in (0, 1), got {decay!r}")
        if decay in list(decays)[:i]:
            raise ConfigError(f"ema.decays lists {decay!r} twice")
