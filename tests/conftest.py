"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs use one thread, like OMP_NUM_THREADS=1 of the CLI runs: on a small loaded
    machine extra threads only slow them down (results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_image_folder(
    root, classes: int = 4, train_per_class: int = 6, val_per_class: int = 3, seed: int = 0
):
    """An ImageNet-style tree of real image files: root/{train,val}/<class>/<image>.

    Images are JPEGs of varying sizes (one grayscale and one PNG per split, as real trees have
    odd files) whose colour depends on the class, so a model can learn a little.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = 36 + (i * 7) % 20, 40 + (i * 5) % 16
                pixels = rng.integers(0, 60, (h, w, 3)) + np.array(
                    [60 * (c % 4), 40 * (c // 4), 90]
                )
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                if i == 1:
                    image.convert("L").save(folder / f"img{i}.JPEG", quality=90)
                elif i == 2:
                    image.save(folder / f"img{i}.png")
                else:
                    image.save(folder / f"img{i}.JPEG", quality=90)
    return root


@pytest.fixture
def image_folder(tmp_path):
    """A small ImageFolder tree (4 classes, 6 train / 3 val images each) under tmp_path/imagenet."""
    return write_image_folder(tmp_path / "imagenet")


def swa_of(checkpoint: dict) -> dict:
    """The SWA average's state_dict in a training checkpoint (swa_repro.state)."""
    return checkpoint["collectors"]["swa"]
