"""The reference pipeline of the benchmark: training, evaluation, BN refresh, averaging and a
plane point the way the authors' code (timgaripov/swa, dnn-mode-connectivity) does them.

A Dataset of PIL images with torchvision transforms RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize in a DataLoader (the authors: 4 workers), batch 128,
shuffle, pinned memory on CUDA, fp32, a host sync per step; averaging by a per-parameter Python
loop (param *= 1 - a; param += a * new); plane points one at a time, each with its own passes
through the DataLoaders. It is kept apart from the project's pipeline on purpose: it is what
the project's code is measured against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import vector_to_parameters

from swa_repro.bn_refresh import refresh_bn
from swa_repro.data import Splits

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
BATCH = 128  # the authors' train and test batch


class PILDataset(torch.utils.data.Dataset):
    """(PIL image, label) pairs made once from uint8 (N, 3, 32, 32), as torchvision.datasets.CIFAR."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        from PIL import Image

        array = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.images = [Image.fromarray(a) for a in array]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_loaders(data: Splits, workers: int, device: torch.device):
    import torchvision.transforms as T

    train_tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    test_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    common = {"batch_size": BATCH, "num_workers": workers, "pin_memory": device.type == "cuda"}
    train = torch.utils.data.DataLoader(
        PILDataset(data.train_x, data.train_y, train_tf), shuffle=True, **common
    )
    test = torch.utils.data.DataLoader(
        PILDataset(data.test_x, data.test_y, test_tf), shuffle=False, **common
    )
    return train, test


def on_device(loader: Iterable, device: torch.device, limit: int | None = None):
    for x, y in itertools.islice(loader, limit):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def reference_train_epoch(model, optimizer, loader, device) -> None:
    """The authors' train_epoch: fp32, loss.item() and correct counted on the host every step."""
    model.train()
    loss_sum, correct = 0.0, 0
    for x, y in on_device(loader, device):
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * x.size(0)
        correct += int(out.argmax(1).eq(y).sum().item())


@torch.no_grad()
def reference_eval(model, loader, device, limit=None) -> tuple[float, float]:
    """The authors' eval: fp32, per-batch host sync."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in on_device(loader, device, limit):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += int(out.argmax(1).eq(y).sum().item())
        n += x.size(0)
    return loss_sum / n, correct / n


def reference_bn_update(model, loader, device, limit=None) -> None:
    """The authors' utils.bn_update (momentum b / (n + b)) through the DataLoader."""
    refresh_bn(model, (x for x, _ in on_device(loader, device, limit)))


@torch.no_grad()
def reference_moving_average(net1: nn.Module, net2: nn.Module, alpha: float) -> None:
    """The authors' utils.moving_average: one Python-level update per parameter tensor."""
    for p1, p2 in zip(net1.parameters(), net2.parameters(), strict=True):
        p1.data *= 1.0 - alpha
        p1.data += p2.data * alpha


def reference_plane_point(model, vector, train_loader, test_loader, device, limit=None) -> None:
    """dnn-mode-connectivity's per-point loop: load, BN update, train eval, test eval."""
    vector_to_parameters(vector, model.parameters())
    reference_bn_update(model, train_loader, device, limit)
    reference_eval(model, train_loader, device, limit)
    reference_eval(model, test_loader, device, limit)
