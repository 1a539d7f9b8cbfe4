"""Data sets (CIFAR-10/100, synthetic, ImageNet) and their batch streams.

The training loop sees every data set through the same few calls (`open_data`):
name, num_classes, train_size, test_size, val_size, train_stream(batch_size) (a stream with
len(), batches(purpose, epoch, start_step) and inputs(purpose, epoch, limit)),
test_batches(batch_size) and (val_size > 0: CIFAR and synthetic data) val_batches(batch_size),
each giving this rank's part in a distributed run.
"""

from __future__ import annotations

from pathlib import Path

from swa_repro.data.cifar import load_cifar
from swa_repro.data.splits import DataError, Splits, hold_out
from swa_repro.data.stream import Normalizer, TrainStream, eval_batches
from swa_repro.data.synthetic import make_synthetic

DATASET_NAMES = ("cifar10", "cifar100", "imagenet", "synthetic")

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Normalizer",
    "Splits",
    "TrainStream",
    "eval_batches",
    "load_data",
    "open_data",
]


def load_data(cfg) -> Splits:
    """The splits named by a data config (conf/data/*.yaml), on CPU, with data.val_size training
    images held out (splits.hold_out)."""
    return hold_out(load_all(cfg), cfg.get("val_size", 0))


def load_all(cfg) -> Splits:
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
    if cfg.name == "imagenet":
        raise DataError(
            "imagenet is streamed from disk for training (open_data), not held in memory"
        )
    raise DataError(f"unknown data set '{cfg.name}'; valid names: {', '.join(DATASET_NAMES)}")


class DeviceData:
    """A data set held on the training device (CIFAR, synthetic) with its streams."""

    def __init__(self, splits: Splits, normalize: Normalizer, seed: int, rank: int, world: int):
        self.splits, self.normalize, self.seed, self.rank, self.world = (
            splits, normalize, seed, rank, world,
        )  # fmt: skip
        self.name, self.num_classes = splits.name, splits.num_classes
        self.train_size, self.test_size = len(splits.train_y), len(splits.test_y)
        self.val_size = splits.val_size

    def train_stream(self, batch_size: int) -> TrainStream:
        s = self.splits
        return TrainStream(
            s.train_x, s.train_y, batch_size, self.normalize, self.seed, self.rank, self.world
        )

    def test_batches(self, batch_size: int):
        s = self.splits
        return eval_batches(s.test_x, s.test_y, batch_size, self.normalize, self.rank, self.world)

    def val_batches(self, batch_size: int):
        """The held-out split, as test_batches (unaugmented, this rank's share)."""
        s = self.splits
        return eval_batches(s.val_x, s.val_y, batch_size, self.normalize, self.rank, self.world)


def open_data(cfg, device, rank: int = 0, world: int = 1, on_main=None):
    """The data of a training config (cfg.data, normalised with cfg.model's mean/std), on `device`.
    `on_main`: Distributed.agree, to scan an ImageFolder tree once for all ranks."""
    normalize = Normalizer(cfg.model.mean, cfg.model.std, device)
    if cfg.data.name == "imagenet":
        from swa_repro.data.imagenet import FolderData

        return FolderData(cfg.data, normalize, cfg.seed, rank, world, on_main)
    return DeviceData(load_data(cfg.data).to(device), normalize, cfg.seed, rank, world)
