"""CIFAR-10/100 from the standard python-pickle batches (torchvision's on-disk format).

Files are read with a restricted unpickler that builds only numpy arrays, lists and
dicts, so a tampered download cannot execute code. Missing data is downloaded (and
its md5 checked) with torchvision's utilities when allowed; every other problem stops
with a one-line DataError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from swa_repro.data.splits import DataError, Splits

# name -> (torchvision dataset class name, label key, number of classes)
_FORMATS = {
    "cifar10": ("CIFAR10", "labels", 10),
    "cifar100": ("CIFAR100", "fine_labels", 100),
}
_SAFE_GLOBALS = {
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2; builds bytes only
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _torchvision_dataset(name: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, _FORMATS[name][0])


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = _ArrayOnlyUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing CIFAR batch file {path}") from None
    except Exception as exc:  # truncated, corrupt, tampered or wrong-format file
        raise DataError(
            f"corrupt or truncated CIFAR batch file {path}: {type(exc).__name__}: {exc}"
        ) from None
    if len(data) != len(labels):
        raise DataError(
            f"corrupt CIFAR batch file {path}: {len(data)} images but {len(labels)} labels"
        )
    return data, labels


def load_cifar(name: str, root: str | Path, download: bool) -> Splits:
    """The full train and test splits of `name` (cifar10 or cifar100) as uint8 tensors."""
    dataset = _torchvision_dataset(name)
    label_key, num_classes = _FORMATS[name][1:]
    root = Path(root).expanduser()
    folder = root / dataset.base_folder
    if not folder.is_dir():
        if download:
            _download(dataset, root)
        else:
            raise DataError(
                f"{name} not found at {folder}; set data.download=true to fetch it, or put the "
                f"extracted '{dataset.base_folder}' folder (from {dataset.url}) under data.root={root}"
            )

    def read(file_list) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_batch(folder / file_name, label_key) for file_name, _md5 in file_list]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"labels in {folder} fall outside 0..{num_classes - 1}: not {name}?")
        return torch.from_numpy(images), torch.from_numpy(labels)

    train_x, train_y = read(dataset.train_list)
    test_x, test_y = read(dataset.test_list)
    return Splits(name, num_classes, train_x, train_y, test_x, test_y)


def _download(dataset, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            dataset.url, str(root), filename=dataset.filename, md5=dataset.tgz_md5
        )
    except Exception as exc:
        raise DataError(
            f"could not download {dataset.url} into {root} ({type(exc).__name__}: {exc}); download "
            f"and extract it by hand so that {root / dataset.base_folder} exists"
        ) from None
