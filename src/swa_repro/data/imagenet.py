"""ImageNet (or any ImageFolder tree) through a multi-worker DataLoader, for Table 2.

Layout under data.root (torchvision's ImageFolder): train/<class>/<image> and val/<class>/<image>,
the same class folders in both (the usual valprep script sorts the flat val images so).

Transforms are torchvision's standard ImageNet ones:
    training and BN refresh: RandomResizedCrop(image_size) + RandomHorizontalFlip
    evaluation:              Resize(resize) + CenterCrop(image_size)
Images travel as uint8 and are normalised on the device (the same Normalizer as CIFAR).

Reproducible passes: a pass is planned from (seed, purpose, epoch) as for CIFAR (a permutation
of the images, cut into global batches shared between the ranks, swa_repro.data.stream), and
each image's crop and flip are drawn from a generator seeded by (pass, image index). The
augmentation is therefore the same for any number of workers or GPUs, and a resumed run sees
exactly the images it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from swa_repro.data.splits import DataError
from swa_repro.data.stream import GlobalBatches, Normalizer, rank_share
from swa_repro.rng import derive_seed


def load_rgb(path: str) -> Image.Image:
    """An image file as RGB; DataError naming the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def image_folder(root: Path, transform=None) -> ImageFolder:
    """ImageFolder of `root`, with one-line DataErrors for a missing or malformed tree."""
    if not root.is_dir():
        raise DataError(
            f"{root} not found: it must be a folder with one sub-folder of images per class"
        )
    try:
        return ImageFolder(str(root), transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:  # no class folder, or a class folder without images
        raise DataError(f"{root} is not an ImageFolder tree: {exc}") from None


def load_folders(cfg) -> tuple[ImageFolder, ImageFolder]:
    """The train and val trees of a data config, checked against each other and num_classes."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root={cfg.root} not found; it must hold {cfg.train_dir}/ and {cfg.val_dir}/ "
            "with one folder of images per class (ImageFolder layout)"
        )
    train = image_folder(root / cfg.train_dir)
    val = image_folder(
        root / cfg.val_dir,
        transforms.Compose([
            transforms.Resize(cfg.resize),
            transforms.CenterCrop(cfg.image_size),
            transforms.PILToTensor(),
        ]),
    )  # fmt: skip
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise DataError(
            f"{root}: {cfg.train_dir}/ and {cfg.val_dir}/ have different class folders "
            f"(only in {cfg.train_dir}: {only_train}, only in {cfg.val_dir}: {only_val})"
        )
    if len(train.classes) != cfg.num_classes:
        raise DataError(
            f"{root} has {len(train.classes)} classes but data.num_classes={cfg.num_classes}"
        )
    return train, val


class SeededImages(Dataset):
    """Items (index, pass_seed) -> (augmented uint8 image, label), the draws seeded by both."""

    def __init__(self, folder: ImageFolder, transform):
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, pass_seed = key
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        # torchvision's transforms draw from torch's CPU generator: seed it for this image only
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(pass_seed, index))
            return self.transform(image), label


class KeyedBatches:
    """Batch sampler: batches of image indices as (index, pass_seed) keys for SeededImages."""

    def __init__(self, batches: Iterator[torch.Tensor], pass_seed: int):
        self.batches, self.pass_seed = batches, pass_seed

    def __iter__(self):
        for batch in self.batches:
            yield [(int(i), self.pass_seed) for i in batch]


class FolderStream(GlobalBatches):
    """Shuffled, augmented, normalised training batches from an ImageFolder, for this rank."""

    def __init__(self, images: SeededImages, batch_size, normalize, seed, rank, world, workers):
        super().__init__(len(images), batch_size, rank, world)
        self.images, self.normalize, self.seed, self.workers = images, normalize, seed, workers

    def batches(self, purpose, epoch, start_step=0, limit=None, whole_batches=False):
        pass_seed = derive_seed(self.seed, purpose, epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(pass_seed))
        indices = (
            self.rank_batches(order, limit) if whole_batches else self.rank_parts(order, start_step)
        )
        sampler = KeyedBatches(indices, pass_seed)
        yield from device_batches(self.images, self.workers, self.normalize, batch_sampler=sampler)


class FolderData:
    """ImageNet-style data: training streams and this rank's share of the validation set."""

    def __init__(
        self, cfg, normalize: Normalizer, seed: int, rank: int = 0, world: int = 1, on_main=None
    ):
        """`on_main(fn)`: fn's result, computed on one rank and given to all (Distributed.agree),
        so that one process, not every GPU's, lists the 1.3M files of the trees."""
        self.name, self.num_classes = cfg.name, cfg.num_classes
        train, self.val = (on_main or (lambda fn: fn()))(lambda: load_folders(cfg))
        augment = transforms.Compose([
            transforms.RandomResizedCrop(cfg.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ])  # fmt: skip
        self.train = SeededImages(train, augment)
        self.train_size, self.test_size = len(train.samples), len(self.val.samples)
        self.normalize, self.seed, self.rank, self.world = normalize, seed, rank, world
        self.workers = cfg.workers

    def train_stream(self, batch_size: int) -> FolderStream:
        return FolderStream(
            self.train, batch_size, self.normalize, self.seed, self.rank, self.world, self.workers
        )

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        share = rank_share(self.test_size, self.rank, self.world)
        subset = Subset(self.val, range(share.start, share.stop))
        return device_batches(subset, self.workers, self.normalize, batch_size=batch_size)


def device_batches(dataset, workers: int, normalize: Normalizer, **batching):
    """A DataLoader's batches, normalised on the device; a worker's DataError as its one line."""
    device = normalize.mean.device
    batches = DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its worker seeds must not draw from the global generator
        **batching,
    )
    try:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            yield normalize(images), labels.to(device, non_blocking=True)
    except DataError as exc:
        last = str(exc).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None
