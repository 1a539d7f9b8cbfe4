"""Device-resident batches with batched on-device augmentation (no DataLoader).

The whole split lives on the training device as uint8. An epoch is planned up front
from a generator seeded by (seed, purpose, epoch): a permutation, and per image a crop
offset (dx, dy) in 0..8 and a flip bit. A batch is then one gather that pads with
zeros in raw pixel space (black, as torchvision's RandomCrop(32, padding=4) before
Normalize), crops 32x32, flips, and finally normalises. The last batch of an epoch is
short (50000 = 390 x 128 + 80), as with the authors' DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swa_repro.rng import derive_seed

PAD = 4
SIZE = 32


@dataclass
class EpochPlan:
    order: torch.Tensor  # (N,) permutation
    dx: torch.Tensor  # (N,) crop column offset in the padded image, 0..2*PAD
    dy: torch.Tensor  # (N,) crop row offset
    flip: torch.Tensor  # (N,) bool


def plan_epoch(n: int, seed: int, device: torch.device) -> EpochPlan:
    """Shuffle and augmentation draws for one pass, on CPU (identical on every device)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    return EpochPlan(*(t.to(device) for t in (order, dx, dy, flip)))


def crop_flip(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by PAD, take the SIZE x SIZE window at (dy, dx), mirror where flip: one gather."""
    b = images.shape[0]
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    ar = torch.arange(SIZE, device=images.device)
    rows = dy[:, None] + ar
    cols = torch.where(flip[:, None], dx[:, None] + (SIZE - 1 - ar), dx[:, None] + ar)
    batch_idx = torch.arange(b, device=images.device)[:, None, None, None]
    chan_idx = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


class Normalizer:
    """uint8 images -> float, (x / 255 - mean) / std per channel."""

    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


class GlobalBatches:
    """The batches of one pass over n images, shared between the ranks of a run.

    Training: a batch of `batch_size` (the global batch: the same numbers for any GPU count) is
    cut into `world` contiguous parts, sizes differing by at most one, and rank r takes part r
    (`rank_parts`). The last batch is short (n = 390 x 128 + 80 for CIFAR), as with the authors'
    DataLoader; with more than one rank a last batch of fewer than `world` images is dropped (a
    rank would get none).
    BN refresh: rank r takes the whole batches r, r + world, ... (`rank_batches`), so every
    batch statistic is that of a full batch, as in one process; `limit` caps the pass at its
    first `limit` images.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    def steps(self) -> int:
        """Training steps of a pass."""
        steps, rest = -(-self.n // self.batch_size), self.n % self.batch_size
        return steps - 1 if self.world > 1 and 0 < rest < self.world else steps

    def step_size(self, step: int) -> int:
        """Images in the global training batch `step` (over all ranks)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def rank_parts(self, order: torch.Tensor, start_step: int = 0) -> Iterator[torch.Tensor]:
        """This rank's part of each global batch of the permutation `order`, from start_step."""
        for step in range(start_step, self.steps()):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield batch[rank_share(len(batch), self.rank, self.world)]

    def rank_batches(self, order: torch.Tensor, limit: int | None = None) -> Iterator[torch.Tensor]:
        """This rank's whole batches of the first `limit` images of `order` (None: all)."""
        n = self.n if limit is None else min(limit, self.n)
        for start in range(self.rank * self.batch_size, n, self.world * self.batch_size):
            yield order[start : min(start + self.batch_size, n)]

    def __len__(self) -> int:
        return self.steps()

    def batches(
        self,
        purpose: str,
        epoch: int,
        start_step: int = 0,
        limit: int | None = None,
        whole_batches: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) for one pass: this rank's parts of the global batches from
        start_step, or (whole_batches) its whole batches of the first `limit` images.
        (purpose, epoch) picks the draws."""
        raise NotImplementedError

    def inputs(self, purpose: str, epoch: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Inputs of this rank's whole batches, of the first `limit` images (the BN refresh)."""
        return (x for x, _ in self.batches(purpose, epoch, limit=limit, whole_batches=True))


class TrainStream(GlobalBatches):
    """Shuffled, augmented, normalised batches of a training split, for this rank."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        normalize: Normalizer,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        super().__init__(len(labels), batch_size, rank, world)
        self.images, self.labels = images, labels
        self.normalize, self.seed = normalize, seed

    def batches(self, purpose, epoch, start_step=0, limit=None, whole_batches=False):
        plan = plan_epoch(
            len(self.labels), derive_seed(self.seed, purpose, epoch), self.images.device
        )
        indices = (
            self.rank_batches(plan.order, limit)
            if whole_batches
            else self.rank_parts(plan.order, start_step)
        )
        for idx in indices:
            crops = crop_flip(self.images[idx], plan.dx[idx], plan.dy[idx], plan.flip[idx])
            yield self.normalize(crops), self.labels[idx]


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    normalize: Normalizer,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Unaugmented batches in storage order, of this rank's contiguous share of the split."""
    share = rank_share(len(labels), rank, world)
    images, labels = images[share], labels[share]
    for start in range(0, len(labels), batch_size):
        yield normalize(images[start : start + batch_size]), labels[start : start + batch_size]


def rank_share(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous part of n items split `world` ways (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
