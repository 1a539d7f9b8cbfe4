"""The in-memory form every data set takes: uint8 images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def to(self, device: torch.device) -> Splits:
        return Splits(
            self.name,
            self.num_classes,
            *(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)),
        )
