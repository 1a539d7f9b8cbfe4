"""Data sets (CIFAR-10/100, synthetic) and device-resident batch streams."""

from __future__ import annotations

from pathlib import Path

from swa_repro.data.cifar import load_cifar
from swa_repro.data.splits import DataError, Splits
from swa_repro.data.stream import Normalizer, TrainStream, eval_batches
from swa_repro.data.synthetic import make_synthetic

DATASET_NAMES = ("cifar10", "cifar100", "synthetic")

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Normalizer",
    "Splits",
    "TrainStream",
    "eval_batches",
    "load_data",
]


def load_data(cfg) -> Splits:
    """The splits named by a data config (conf/data/*.yaml), on CPU."""
    if cfg.name == "synthetic":
        return make_synthetic(
            cfg.num_classes,
            cfg.train_size,
            cfg.test_size,
            cfg.seed,
            signal=cfg.signal,
            distractor=cfg.distractor,
            noise=cfg.noise,
            label_noise=cfg.label_noise,
        )
    if cfg.name in ("cifar10", "cifar100"):
        return load_cifar(cfg.name, Path(cfg.root), cfg.download)
    raise DataError(f"unknown data set '{cfg.name}'; valid names: {', '.join(DATASET_NAMES)}")
