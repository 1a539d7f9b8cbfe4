"""The in-memory form every data set takes: uint8 images and int64 labels; and the held-out split.

hold_out(splits, val_size): `val_size` training images chosen by a permutation seeded by
derive_seed("held_out", data set, val_size), the same for every run seed and model (so runs that
differ only in their seed are fitted and compared on the same images), are moved out of the
training set into `val_x`/`val_y`; both keep the storage order. val_size 0 leaves the splits as
they are (bitwise: the paper's runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swa_repro.rng import derive_seed


class DataError(RuntimeError):
    """A data problem the user must fix; its message is one line."""


@dataclass
class Splits:
    name: str
    num_classes: int
    train_x: torch.Tensor  # (N, 3, 32, 32) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None  # held out of training (hold_out); None: no such split
    val_y: torch.Tensor | None = None

    @property
    def val_size(self) -> int:
        return 0 if self.val_y is None else len(self.val_y)

    def to(self, device: torch.device) -> Splits:
        tensors = (self.train_x, self.train_y, self.test_x, self.test_y, self.val_x, self.val_y)
        return Splits(self.name, self.num_classes, *(_to(t, device) for t in tensors))


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def hold_out(splits: Splits, val_size: int) -> Splits:
    """`splits` with `val_size` training images moved into the held-out split (module docstring)."""
    if not val_size:
        return splits
    n = len(splits.train_y)
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must lie in 1..{n - 1} for {splits.name}")
    gen = torch.Generator().manual_seed(derive_seed("held_out", splits.name, val_size))
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.randperm(n, generator=gen)[:val_size]] = True
    x, y = splits.train_x, splits.train_y
    return Splits(
        splits.name, splits.num_classes, x[~chosen], y[~chosen], splits.test_x, splits.test_y,
        x[chosen], y[chosen],
    )  # fmt: skip
