"""Reject a bad run configuration before any data is loaded or any epoch runs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import ListConfig

from swa_repro.averaging import is_averaging_epoch
from swa_repro.data import DATASET_NAMES
from swa_repro.models import MODEL_NAMES, TORCHVISION_MODELS, check_bn_weight_init

METHOD_NAMES = ("sgd", "swa")
SCHEDULE_NAMES = ("constant", "cyclic", "paper")
LOGGER_NAMES = ("none", "wandb")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


class ConfigError(ValueError):
    """A configuration mistake; its message is one line."""


def is_number(value) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value, key: str) -> None:
    if not is_number(value) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")


def _non_negative(value, key: str) -> None:
    if not is_number(value) or not value >= 0:
        raise ConfigError(f"{key} must be a number >= 0, got {value!r}")


def check_int(value, key: str, minimum: int = 1) -> None:
    """ConfigError naming `key` unless `value` is an integer >= minimum (a bool is not)."""
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def _integer(value, key: str) -> None:
    if not _is_int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")


def _boolean(value, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _list(value, key: str) -> None:
    if not isinstance(value, ListConfig | list | tuple):
        raise ConfigError(f"{key} must be a list such as [1, 2], got {value!r}")


def check_one_of(value, valid: tuple[str, ...], key: str) -> None:
    """ConfigError naming `key` and the valid names unless `value` is one of them."""
    if value not in valid:
        raise ConfigError(f"unknown {key} '{value}'; valid names: {', '.join(sorted(valid))}")


def validate_config(cfg) -> None:
    """Raise ConfigError naming the first problem in a training config."""
    check_one_of(cfg.model.name, MODEL_NAMES, "model.name")
    check_one_of(cfg.data.name, DATASET_NAMES, "data.name")
    check_one_of(cfg.method.name, METHOD_NAMES, "method.name")
    check_one_of(cfg.schedule.name, SCHEDULE_NAMES, "schedule.name")
    check_one_of(cfg.logger.name, LOGGER_NAMES, "logger.name")
    if cfg.logger.name == "wandb" and cfg.logger.mode is not None:
        check_one_of(cfg.logger.mode, ("disabled", "offline", "online"), "logger.mode")

    check_int(cfg.epochs, "epochs")
    check_int(cfg.budget, "budget")
    _integer(cfg.seed, "seed")
    _positive(cfg.optim.lr_init, "optim.lr_init")
    _non_negative(cfg.optim.momentum, "optim.momentum")
    _non_negative(cfg.optim.weight_decay, "optim.weight_decay")
    check_int(cfg.optim.batch_size, "optim.batch_size")
    check_int(cfg.eval_every, "eval_every")
    check_int(cfg.eval_batch_size, "eval_batch_size")
    check_int(cfg.checkpoint.every, "checkpoint.every")
    if cfg.bn_refresh_images is not None:
        check_int(cfg.bn_refresh_images, "bn_refresh_images")
    for key in ("eval_at_start", "eval_first_epoch", "progress"):
        _boolean(cfg[key], key)
    check_int(cfg.checkpoint.keep_every, "checkpoint.keep_every", minimum=0)
    _list(cfg.checkpoint.keep_epochs, "checkpoint.keep_epochs")
    for epoch in cfg.checkpoint.keep_epochs:
        if not _is_int(epoch) or not 1 <= epoch <= cfg.epochs:
            raise ConfigError(
                f"checkpoint.keep_epochs entries must be epochs in 1..{cfg.epochs}, got {epoch!r}; "
                "set checkpoint.keep_epochs=[] to clear the list"
            )
    _list(cfg.method.budget_readings, "method.budget_readings")
    for reading in cfg.method.budget_readings:
        _positive(reading, "method.budget_readings entries")

    if cfg.method.swa:
        _positive(cfg.method.swa_lr, "method.swa_lr")
        check_int(cfg.method.swa_c_epochs, "method.swa_c_epochs")
        start, every = cfg.method.swa_start, cfg.method.swa_c_epochs
        if not is_number(start) or not 1 <= start <= cfg.epochs:
            raise ConfigError(f"method.swa_start must lie in 1..epochs={cfg.epochs}, got {start!r}")
        if not any(is_averaging_epoch(e, start, every) for e in range(cfg.epochs)):
            raise ConfigError(
                f"method.swa_start={start} with method.swa_c_epochs={every} never collects a model "
                f"within epochs={cfg.epochs}; use an integer swa_start"
            )
        _boolean(cfg.method.swa_include_start, "method.swa_include_start")

    if cfg.schedule.name == "constant":
        _positive(cfg.schedule.lr, "schedule.lr")
    elif cfg.schedule.name == "cyclic":
        _positive(cfg.schedule.a1, "schedule.a1")
        _positive(cfg.schedule.a2, "schedule.a2")
        check_int(cfg.schedule.cycle_epochs, "schedule.cycle_epochs")
        cycle = cfg.schedule.cycle_epochs
        if cfg.method.swa and (
            cfg.method.swa_c_epochs != cycle or cfg.method.swa_start % cycle != 0
        ):
            raise ConfigError(
                f"with schedule=cyclic the average must collect the models at cycle ends: set "
                f"method.swa_c_epochs={cycle} and method.swa_start to a multiple of {cycle}"
            )

    _check_data(cfg.data)
    _check_pretrained(cfg.model.name, cfg.model.get("pretrained"), cfg.data.num_classes)
    try:
        check_bn_weight_init(cfg.model.name, cfg.model.get("bn_weight_init"))
    except ValueError as exc:
        raise ConfigError(f"model.{exc}") from None
    check_device(cfg.device)
    if cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise ConfigError(
            f"resume must be 'auto' or an existing checkpoint file, got {cfg.resume!r}"
        )


def _check_pretrained(model: str, weights: str | None, num_classes: int) -> None:
    """Pretrained weights must exist in torchvision for the model and fit the class count."""
    if weights is None:
        return
    if model not in TORCHVISION_MODELS:
        raise ConfigError(
            f"model.pretrained is for {', '.join(TORCHVISION_MODELS)}; {model} has none"
        )
    import torchvision

    enum = torchvision.models.get_model_weights(model)
    valid = [w.name for w in enum]
    if weights not in valid:
        raise ConfigError(
            f"unknown model.pretrained '{weights}' for {model}; valid names: {', '.join(valid)}"
        )
    classes = len(enum[weights].meta["categories"])
    if num_classes != classes:
        raise ConfigError(
            f"model.pretrained={weights} has {classes} classes but data.num_classes={num_classes}"
        )


def _check_data(data) -> None:
    expected = CIFAR_CLASSES.get(data.name)
    if data.name == "imagenet":
        check_int(data.num_classes, "data.num_classes")
        for key in ("image_size", "resize"):
            check_int(data[key], f"data.{key}")
        check_int(data.workers, "data.workers", minimum=0)
        if Path(data.root).expanduser().is_file():
            raise ConfigError(
                f"data.root={data.root} is a file; it must be the folder that holds train/ and val/"
            )
    elif expected is not None:
        if data.num_classes != expected:
            raise ConfigError(
                f"data.num_classes={data.num_classes} does not match {data.name} ({expected} classes)"
            )
        if Path(data.root).expanduser().is_file():
            raise ConfigError(
                f"data.root={data.root} is a file; it must be the folder that holds the data"
            )
        _boolean(data.download, "data.download")
    else:
        check_int(data.num_classes, "data.num_classes")
        if data.num_classes < 2:
            raise ConfigError(f"data.num_classes must be at least 2, got {data.num_classes}")
        check_int(data.train_size, "data.train_size")
        check_int(data.test_size, "data.test_size")
        _integer(data.seed, "data.seed")
        for key in ("signal", "distractor", "noise"):
            _non_negative(data[key], f"data.{key}")
        if not is_number(data.label_noise) or not 0 <= data.label_noise <= 1:
            raise ConfigError(
                f"data.label_noise must be a fraction in [0, 1], got {data.label_noise!r}"
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
    if low_rank:
        check_int(max_rank, "swag.max_rank", minimum=2)
    check_int(samples, "swag.samples")
    for value, key in ((scale, "swag.scale"), (scale_diag, "swag.scale_diag")):
        if not is_number(value) or not 0 < value < math.inf:
            raise ConfigError(f"{key} must be a finite positive number, got {value!r}")


def check_ema_decays(decays) -> None:
    """ConfigError unless `decays` (ema.decays) is a list of distinct numbers inside (0, 1)
    (an empty list: no EMA)."""
    _list(decays, "ema.decays")
    for i, decay in enumerate(decays):
        if not is_number(decay) or not 0 < decay < 1:
            raise ConfigError(f"ema.decays entries must lie in (0, 1), got {decay!r}")
        if decay in list(decays)[:i]:
            raise ConfigError(f"ema.decays lists {decay!r} twice")
