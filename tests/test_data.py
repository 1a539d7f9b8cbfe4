"""Data: augmentation and batch streams, the CIFAR loader on the real on-disk format, synthetic data."""

import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from swa_repro.data import (
    DataError,
    Normalizer,
    TrainStream,
    eval_batches,
    load_data,
    make_synthetic,
)
from swa_repro.data.cifar import load_cifar
from swa_repro.data.stream import crop_flip

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CPU = torch.device("cpu")


def _identity_normalizer():
    return Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), CPU)  # x / 255


# ------------------------------------------------------------------------ crop and flip


def _random_images(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)


def test_crop_flip_shape_and_dtype():
    images = _random_images(5)
    out = crop_flip(
        images,
        torch.tensor([0, 8, 4, 2, 7]),
        torch.tensor([8, 0, 4, 5, 1]),
        torch.tensor([False, True, False, True, True]),
    )
    assert out.shape == (5, 3, 32, 32)
    assert out.dtype == torch.uint8


def test_crop_is_the_window_of_the_zero_padded_image():
    image = _random_images(1, seed=1)
    padded = F.pad(image, (4, 4, 4, 4))  # 40 x 40, zeros around
    offsets = [(dx, dy) for dx in range(9) for dy in range(9)]
    n = len(offsets)
    images = image.expand(n, -1, -1, -1).contiguous()
    dx = torch.tensor([o[0] for o in offsets])
    dy = torch.tensor([o[1] for o in offsets])
    plain = crop_flip(images, dx, dy, torch.zeros(n, dtype=torch.bool))
    flipped = crop_flip(images, dx, dy, torch.ones(n, dtype=torch.bool))
    for k, (x0, y0) in enumerate(offsets):
        window = padded[0, :, y0 : y0 + 32, x0 : x0 + 32]
        assert torch.equal(plain[k], window), (x0, y0)
        assert torch.equal(flipped[k], window.flip(-1)), (x0, y0)
    # the centred crop is the image itself
    assert torch.equal(plain[offsets.index((4, 4))], image[0])


def test_padding_is_zero_and_crops_stay_in_the_padded_image():
    white = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = crop_flip(white, torch.tensor([0, 8]), torch.tensor([0, 8]), torch.tensor([False, False]))
    top_left = out[0]
    assert (top_left[:, :4, :] == 0).all() and (top_left[:, :, :4] == 0).all()
    assert (top_left[:, 4:, 4:] == 255).all()
    bottom_right = out[1]
    assert (bottom_right[:, -4:, :] == 0).all() and (bottom_right[:, :, -4:] == 0).all()
    assert (bottom_right[:, :28, :28] == 255).all()


def test_padding_is_black_before_normalisation():
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    crops = crop_flip(white, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))
    out = Normalizer(CIFAR_MEAN, CIFAR_STD, CPU)(crops)
    assert out.dtype == torch.float32
    for c in range(3):
        pad_value = (0.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        white_value = (1.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        torch.testing.assert_close(
            out[0, c, :4, :], torch.full((4, 32), pad_value), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            out[0, c, :, :4], torch.full((32, 4), pad_value), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            out[0, c, 4:, 4:], torch.full((28, 28), white_value), rtol=0, atol=1e-5
        )


# -------------------------------------------------------------------------- TrainStream


def _half_white(n):
    """Left half 255, right half 0: tells flips (and crop offsets) apart."""
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, :16] = 255
    return images


def test_stream_flips_about_half_and_uses_every_crop_offset():
    n = 5000
    stream = TrainStream(_half_white(n), torch.arange(n), 500, _identity_normalizer(), seed=0)
    xs = torch.cat([x for x, _ in stream.batches("train", 0)])
    assert xs.shape == (n, 3, 32, 32)
    # output column 10 always maps to original column 6..14 (unflipped) or 17..25 (flipped)
    probe = xs[:, 0, 16, 10]
    assert set(probe.unique().tolist()) <= {0.0, 1.0}
    flipped = probe == 0.0
    assert abs(flipped.float().mean().item() - 0.5) < 0.03

    plain = xs[~flipped, 0]  # (m, 32, 32), white = original columns 0..15
    # unflipped: output column c shows original column c + dx - 4, so the last white column
    # in row 16 is 19 - dx
    last_white = 31 - (plain[:, 16, :].flip(-1) == 1.0).int().argmax(1)
    dx = 19 - last_white
    # column 10: top rows are padding when dy < 4, bottom rows when dy > 4
    col = plain[:, :, 10]
    leading = (col == 1.0).int().argmax(1)
    trailing = (col.flip(-1) == 1.0).int().argmax(1)
    dy = 4 - leading + trailing
    assert set(dx.tolist()) == set(range(9))
    assert set(dy.tolist()) == set(range(9))
    # each offset about 1/9 of the time
    for values in (dx, dy):
        counts = torch.bincount(values, minlength=9).float() / len(values)
        assert (counts - 1 / 9).abs().max() < 0.04


def _id_images(n):
    """Image i is constant: channel 0 = i % 256, channel 1 = i // 256 (readable after any crop)."""
    ids = torch.arange(n)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = (ids % 256).to(torch.uint8)[:, None, None]
    images[:, 1] = (ids // 256).to(torch.uint8)[:, None, None]
    return images


def _read_ids(x):
    centre = (x[:, :2, 16, 16] * 255).round().long()  # centre pixel is never padding
    return centre[:, 0] + 256 * centre[:, 1]


def _stream(n=1000, batch_size=128, seed=0):
    return TrainStream(_id_images(n), torch.arange(n), batch_size, _identity_normalizer(), seed)


def test_stream_batch_count_and_short_last_batch():
    stream = _stream(1000, 128)
    assert len(stream) == 8
    sizes = [len(y) for _, y in stream.batches("train", 0)]
    assert sizes == [128] * 7 + [104]
    exact = _stream(256, 64)
    assert len(exact) == 4
    assert [len(y) for _, y in exact.batches("train", 0)] == [64] * 4


def test_stream_every_image_once_per_epoch_with_matching_label():
    stream = _stream(600, 128)
    for epoch in (0, 1):
        labels, ids = [], []
        for x, y in stream.batches("train", epoch):
            assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
            labels.append(y)
            ids.append(_read_ids(x))
        labels, ids = torch.cat(labels), torch.cat(ids)
        assert torch.equal(labels.sort().values, torch.arange(600))
        assert torch.equal(ids, labels)  # each image travels with its own label
        assert not torch.equal(labels, torch.arange(600))  # shuffled


def test_stream_is_deterministic_per_seed_and_epoch():
    a = list(_stream(300, seed=0).batches("train", 3))
    b = list(_stream(300, seed=0).batches("train", 3))
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = torch.cat([y for _, y in a])
    assert len(a) == 3
    assert not torch.equal(
        order, torch.cat([y for _, y in _stream(300, seed=0).batches("train", 4)])
    )
    assert not torch.equal(
        order, torch.cat([y for _, y in _stream(300, seed=1).batches("train", 3)])
    )
    assert not torch.equal(
        order, torch.cat([y for _, y in _stream(300, seed=0).batches("bn_refresh", 3)])
    )


def test_stream_start_step_skips_exactly_that_many_batches():
    stream = _stream(300, 32)
    full = list(stream.batches("train", 2))
    resumed = list(stream.batches("train", 2, start_step=3))
    assert len(resumed) == len(full) - 3 == 7
    for (xa, ya), (xb, yb) in zip(full[3:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(stream.batches("train", 2, start_step=10)) == []


def test_stream_inputs_are_the_batches_inputs():
    stream = _stream(300, 128)
    xs = list(stream.inputs("bn_refresh", 1))
    full = list(stream.batches("bn_refresh", 1))
    assert len(xs) == len(full) == 3
    for x, (xb, _) in zip(xs, full, strict=True):
        assert torch.equal(x, xb)


def test_eval_batches_are_unaugmented_and_in_order():
    images = _random_images(300, seed=2)
    labels = torch.arange(300)
    norm = Normalizer(CIFAR_MEAN, CIFAR_STD, CPU)
    batches = list(eval_batches(images, labels, 128, norm))
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - mean) / std, rtol=0, atol=1e-5)


# ------------------------------------------------------------------- CIFAR on-disk format


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` (BINSTRING opcodes), as cPickle did for the
    original CIFAR batches: the data bytes and the keys then load as latin1 `str`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _dump(obj, path, style):
    if style == "py2":  # byte-for-byte the layout of the original (Python 2) files
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(
            buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        )
    else:  # ("py3", protocol)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=style[1])


def _images_channel_major(images):
    """(n, 3, 32, 32) -> (n, 3072) rows of 1024 R, 1024 G, 1024 B, each row-major, by hand."""
    return np.stack(
        [np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images]
    )


CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label key, classes)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _write_cifar(root, name, per_file=3, style="py2", bytes_keys=False, seed=0):
    """A tiny data set in the real layout; returns {file name: (images (n,3,32,32), labels)}."""
    folder_name, train_files, test_files, label_key, classes = CIFAR_LAYOUT[name]
    folder = root / folder_name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for file_name in train_files + test_files:
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, per_file)]
        entry = {
            "batch_label": f"batch {file_name}",
            "data": _images_channel_major(images),
            label_key: labels,
            "filenames": [f"img_{file_name}_{k}.png" for k in range(per_file)],
        }
        if name == "cifar100":
            entry["coarse_labels"] = [v % 20 for v in labels]
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        _dump(entry, folder / file_name, style)
        written[file_name] = (images, labels)
    return folder, written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_loads_the_real_format(tmp_path, name, bytes_keys):
    _, written = _write_cifar(tmp_path, name, per_file=3, bytes_keys=bytes_keys)
    _, train_files, test_files, _, classes = CIFAR_LAYOUT[name]
    splits = load_cifar(name, tmp_path, download=False)
    assert splits.name == name and splits.num_classes == classes
    n_train = 3 * len(train_files)
    assert splits.train_x.shape == (n_train, 3, 32, 32) and splits.train_x.dtype == torch.uint8
    assert splits.train_y.shape == (n_train,) and splits.train_y.dtype == torch.int64
    assert splits.test_x.shape == (3, 3, 32, 32) and splits.test_x.dtype == torch.uint8
    assert splits.test_y.shape == (3,) and splits.test_y.dtype == torch.int64

    exp_train_x = np.concatenate([written[f][0] for f in train_files])
    exp_train_y = sum((written[f][1] for f in train_files), [])
    assert np.array_equal(splits.train_x.numpy(), exp_train_x)
    assert splits.train_y.tolist() == exp_train_y
    assert np.array_equal(splits.test_x.numpy(), written[test_files[0]][0])
    assert splits.test_y.tolist() == written[test_files[0]][1]
    # one pixel by hand: row index c*1024 + y*32 + x of the raw file
    images, _ = written[train_files[0]]
    raw = _images_channel_major(images)
    assert splits.train_x[1, 2, 5, 30].item() == raw[1, 2 * 1024 + 5 * 32 + 30]
    assert splits.train_x[0, 0, 31, 0].item() == raw[0, 31 * 32]


def test_cifar_python3_protocol4_with_str_keys_loads(tmp_path):
    _, written = _write_cifar(tmp_path, "cifar10", style=("py3", 4))
    splits = load_cifar("cifar10", tmp_path, download=False)
    assert np.array_equal(splits.test_x.numpy(), written["test_batch"][0])


def test_cifar_python3_bytes_keys_fail_cleanly(tmp_path):
    # Python 3 bytes keys stay bytes (encoding= only applies to Python 2 str): not CIFAR.
    folder, _ = _write_cifar(tmp_path, "cifar10", style=("py3", 4), bytes_keys=True)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and str(folder / "data_batch_1") in message


def test_cifar_python3_protocol2_loads(tmp_path):
    _, written = _write_cifar(tmp_path, "cifar10", style=("py3", 2))
    splits = load_cifar("cifar10", tmp_path, download=False)
    assert np.array_equal(splits.test_x.numpy(), written["test_batch"][0])


def test_cifar_truncated_file_is_a_one_line_data_error(tmp_path):
    folder, _ = _write_cifar(tmp_path, "cifar10")
    path = folder / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


def test_cifar_missing_batch_file_names_it(tmp_path):
    folder, _ = _write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=False)
    assert "\n" not in str(info.value) and str(folder / "data_batch_4") in str(info.value)


@pytest.mark.parametrize(
    ("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_missing_folder_without_download(tmp_path, name, folder):
    with pytest.raises(DataError) as info:
        load_cifar(name, tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / folder) in message
    assert "data.download" in message
    assert not (tmp_path / "nowhere").exists()  # nothing was fetched or created


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar_refuses_a_pickle_that_executes_code(tmp_path):
    folder, _ = _write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "MARKER"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Evil(f"touch {marker}"), "labels": [0]}, f, protocol=2)
    # the payload does work when unpickled without restrictions
    probe = tmp_path / "PROBE"
    assert pickle.loads(pickle.dumps(_Evil(f"touch {probe}"))) == 0 and probe.exists()

    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=False)
    assert not marker.exists()
    assert "\n" not in str(info.value) and str(folder / "data_batch_1") in str(info.value)


@pytest.mark.parametrize(
    ("name", "bad_label"), [("cifar10", 10), ("cifar10", -1), ("cifar100", 100)]
)
def test_cifar_labels_out_of_range(tmp_path, name, bad_label):
    folder_name, _, test_files, label_key, _ = CIFAR_LAYOUT[name]
    _write_cifar(tmp_path, name)
    path = tmp_path / folder_name / test_files[0]
    entry = {"data": np.zeros((2, 3072), dtype=np.uint8), label_key: [0, bad_label]}
    _dump(entry, path, "py2")
    with pytest.raises(DataError) as info:
        load_cifar(name, tmp_path, download=False)
    assert "\n" not in str(info.value)


def test_cifar_image_label_count_mismatch(tmp_path):
    folder, _ = _write_cifar(tmp_path, "cifar10")
    _dump(
        {"data": np.zeros((3, 3072), dtype=np.uint8), "labels": [0, 1]},
        folder / "test_batch",
        "py2",
    )
    with pytest.raises(DataError, match="test_batch"):
        load_cifar("cifar10", tmp_path, download=False)


def test_load_data_reads_cifar_from_config(tmp_path):
    _, written = _write_cifar(tmp_path, "cifar100")
    cfg = OmegaConf.create({"name": "cifar100", "root": str(tmp_path), "download": False})
    splits = load_data(cfg)
    assert np.array_equal(splits.test_x.numpy(), written["test"][0])


# ------------------------------------------------------------------------ synthetic data


def test_synthetic_shapes_dtypes_and_ranges():
    s = make_synthetic(num_classes=7, train_size=50, test_size=20, seed=0)
    assert s.name == "synthetic" and s.num_classes == 7
    assert s.train_x.shape == (50, 3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.test_x.shape == (20, 3, 32, 32) and s.test_x.dtype == torch.uint8
    assert s.train_y.shape == (50,) and s.train_y.dtype == torch.int64
    assert s.test_y.shape == (20,) and s.test_y.dtype == torch.int64
    for y in (s.train_y, s.test_y):
        assert int(y.min()) >= 0 and int(y.max()) < 7
    assert s.train_x.float().std() > 10  # not a constant image


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(num_classes=5, train_size=40, test_size=10, seed=3)
    b = make_synthetic(num_classes=5, train_size=40, test_size=10, seed=3)
    c = make_synthetic(num_classes=5, train_size=40, test_size=10, seed=4)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.train_x, c.train_x)
    assert not torch.equal(a.test_x, c.test_x)


def test_synthetic_classes_are_configurable():
    two = make_synthetic(num_classes=2, train_size=200, test_size=100, seed=0)
    assert set(two.train_y.tolist()) == {0, 1}
    many = make_synthetic(num_classes=20, train_size=400, test_size=100, seed=0)
    assert many.num_classes == 20
    assert int(many.train_y.max()) < 20 and len(set(many.train_y.tolist())) > 10


def test_load_data_synthetic_and_unknown_name():
    knobs = {"signal": 0.3, "distractor": 0.5, "noise": 0.2, "label_noise": 0.1}
    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "num_classes": 4,
            "train_size": 30,
            "test_size": 12,
            "seed": 5,
            **knobs,
        }
    )
    s = load_data(cfg)
    ref = make_synthetic(4, 30, 12, 5, **knobs)
    assert s.train_x.shape == (30, 3, 32, 32) and s.test_x.shape == (12, 3, 32, 32)
    assert torch.equal(s.train_x, ref.train_x) and torch.equal(s.test_y, ref.test_y)
    with pytest.raises(DataError, match="imagenet"):
        load_data(OmegaConf.create({"name": "imagenet"}))
