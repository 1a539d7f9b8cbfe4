"""A CIFAR-shaped synthetic data set for the offline demo and the tests.

Each class is a faint smooth colour pattern (a 4x4 random image upsampled to 32x32).
An image is its class pattern (shifted by a few pixels, random contrast) under a
stronger distractor drawn from a pool shared by all classes, plus pixel noise;
optionally a fraction of the training labels is flipped at random. The class signal is
learnable but weak, so a small model fits the training set better than it generalises
(demo: about 87% train vs 84% test accuracy for SGD), and SWA gains over SGD as on
CIFAR. Deterministic given the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_repro.data.splits import Splits


def make_synthetic(
    num_classes: int = 10,
    train_size: int = 5000,
    test_size: int = 2000,
    seed: int = 0,
    signal: float = 0.22,
    distractor: float = 0.6,
    noise: float = 0.3,
    label_noise: float = 0.0,
    distractor_pool: int = 64,
) -> Splits:
    gen = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(
        torch.rand(num_classes, 3, 4, 4, generator=gen) - 0.5, size=32, mode="bicubic"
    )
    distractors = F.interpolate(
        torch.rand(distractor_pool, 3, 8, 8, generator=gen) - 0.5, size=32, mode="bicubic"
    )

    def sample(n: int, flip_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=gen)
        shifts = torch.randint(-3, 4, (n, 2), generator=gen)
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
        images = torch.stack(
            [
                torch.roll(patterns[c], (int(s[0]), int(s[1])), dims=(1, 2))
                for c, s in zip(labels, shifts, strict=True)
            ]
        )
        clutter = distractors[torch.randint(distractor_pool, (n,), generator=gen)]
        images = (
            0.5
            + signal * contrast * images
            + distractor * clutter
            + noise * torch.randn(images.shape, generator=gen)
        )
        flipped = torch.rand(n, generator=gen) < flip_fraction
        labels = torch.where(flipped, torch.randint(num_classes, (n,), generator=gen), labels)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_x, train_y = sample(train_size, label_noise)
    test_x, test_y = sample(test_size, 0.0)
    return Splits("synthetic", num_classes, train_x, train_y, test_x, test_y)
