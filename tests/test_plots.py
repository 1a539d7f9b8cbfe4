"""The analysis figures (plots/plane.py, trajectory.py, line.py, rays.py, fge.py).

Small synthetic inputs in each .npz format; every script's draw() and CLI must write a
readable PNG and a PDF without touching its input; the plane levels are checked directly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

PLOTS = Path(__file__).resolve().parents[1] / "plots"
sys.path.insert(0, str(PLOTS))

import fge  # noqa: E402
import line  # noqa: E402
import plane  # noqa: E402
import rays  # noqa: E402
import trajectory  # noqa: E402
from plot_common import load, title  # noqa: E402
from swa_repro.layout import RunPaths  # noqa: E402

METRICS = ("train_loss", "train_nll", "train_err", "test_loss", "test_nll", "test_err")
CONFIG = {"model": "PreResNet164", "data": "synthetic", "synthetic": True}


def _config(**extra) -> np.ndarray:
    return np.array(json.dumps({**CONFIG, **extra}))


def make_plane(path: Path, g: int = 5, with_trajectory: bool = False) -> Path:
    x = np.linspace(-0.2, 1.2, g) * 10.0
    y = np.linspace(-0.2, 1.2, g) * 6.0
    xx, yy = np.meshgrid(x, y, indexing="ij")  # [i_x, j_y]
    bowl = ((xx - 6.0) / 6.0) ** 2 + ((yy - 3.0) / 4.0) ** 2
    done = np.ones((g, g), dtype=bool)
    done[-1, -1] = done[0, -1] = False
    arrays = {}
    for m in METRICS:
        scale = 40.0 if m.endswith("err") else 3.0
        value = 0.02 * scale + scale * bowl  # exceeds vmax in the corners
        value[~done] = np.nan
        arrays[m] = value
    arrays["train_err"][:] = np.nan  # a metric not computed at all
    names = np.array(["SGD", "SWA", "epoch 125", "FGE 1"])
    xy = np.array([[0.0, 0.0], [6.0, 3.0], [10.0, 0.0], [4.0, 5.0]])
    extra = {}
    if with_trajectory:
        s = np.linspace(0, 1, 12)
        extra["trajectory_xy"] = np.stack([10 * s, 6 * np.sin(np.pi * s)], axis=1)
        extra["trajectory_epochs"] = np.arange(100, 112)
    np.savez(
        path,
        x=x,
        y=y,
        done=done,
        point_names=names,
        point_xy=xy,
        config=_config(labels={"epoch 125": "SGD epoch 125"}),
        **arrays,
        **extra,
    )
    return path


def make_line(path: Path, n: int = 21) -> Path:
    t = np.linspace(-0.5, 1.5, n)
    distance = 8.0 * t
    arrays = {m: 0.1 + (t - 0.4) ** 2 for m in METRICS}
    arrays.update(train_err=5 + 20 * (t - 0.4) ** 2, test_err=25 + 20 * (t - 0.1) ** 2)
    np.savez(path, t=t, distance=distance, sgd_distance=np.float64(8.0), config=_config(), **arrays)
    return path


def make_rays(path: Path, r: int = 3, n: int = 9) -> Path:
    d = np.linspace(0.0, 20.0, n)
    rng = np.random.default_rng(0)
    width = np.array([1.0, 0.5])[:, None, None] * (1 + 0.2 * rng.random((2, r, 1)))
    arrays = {m: 0.1 + (d / 10.0) ** 2 / width * (20 if m.endswith("err") else 1) for m in METRICS}
    arrays["test_err"][1, 0, -1] = np.nan
    np.savez(path, distances=d, origins=np.array(["swa", "sgd"]), config=_config(), **arrays)
    return path


def make_fge(path: Path, s: int = 6) -> Path:
    rng = np.random.default_rng(1)
    sample = 70.0 + rng.random(s)
    ensemble = 70.0 + 3.0 * (1 - np.exp(-np.arange(s)))
    np.savez(path, sample_test_acc=sample, ensemble_test_acc=ensemble, config=_config())
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_written(paths: list[Path], out: Path) -> None:
    assert sorted(paths) == sorted([out.with_suffix(".png"), out.with_suffix(".pdf")])
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
    image = mpimg.imread(out.with_suffix(".png"))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert 300 <= image.shape[0] <= 3000 and 400 <= image.shape[1] <= 4000, image.shape
    assert image.std() > 0.05  # not a blank page


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    return {
        "plane": make_plane(d / "plane.npz"),
        "trajectory": make_plane(d / "traj.npz", g=7, with_trajectory=True),
        "line": make_line(d / "line.npz"),
        "rays": make_rays(d / "rays.npz"),
        "fge": make_fge(d / "fge.npz"),
    }


CASES = {
    "plane": lambda i, out: plane.draw(i["plane"], out),
    "plane_traj": lambda i, out: plane.draw(i["trajectory"], out, ["test_err", "train_err"]),
    "trajectory": lambda i, out: trajectory.draw([i["trajectory"], i["trajectory"]], out),
    "line": lambda i, out: line.draw(i["line"], out),
    "rays": lambda i, out: rays.draw(i["rays"], out),
    "fge": lambda i, out: fge.draw(i["fge"], out),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_draw_writes_figures_and_leaves_inputs(case, inputs, tmp_path):
    before = {k: _digest(p) for k, p in inputs.items()}
    out = tmp_path / "fig" / f"{case}.png"
    _check_written(CASES[case](inputs, out), out)
    assert {k: _digest(p) for k, p in inputs.items()} == before


CLI = {
    "plane": ["plane", "--metrics", "train_loss", "test_err", "test_nll", "--vmax", "test_err=30"],
    "trajectory": ["trajectory", "trajectory"],
    "line": ["line"],
    "rays": ["rays", "--metrics", "test_err"],
    "fge": ["fge"],
}


@pytest.mark.parametrize("script", sorted(CLI))
def test_cli(script, inputs, tmp_path):
    first, *rest = CLI[script]
    args = [str(inputs[first])]
    while rest and rest[0] in inputs:
        args.append(str(inputs[rest.pop(0)]))
    out = tmp_path / f"{script}.png"
    result = subprocess.run(
        [sys.executable, str(PLOTS / f"{script}.py"), *args, *rest, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert f"wrote {out.with_suffix('.pdf')}" in result.stdout
    _check_written([out, out.with_suffix(".pdf")], out)


def test_draw_panel_does_not_modify_arrays(inputs):
    import matplotlib.pyplot as plt

    data = load(inputs["trajectory"])
    copies = {k: np.array(v, copy=True) for k, v in data.items() if isinstance(v, np.ndarray)}
    fig, axes = plt.subplots(1, 3)
    for ax, metric in zip(axes, ("train_loss", "test_err", "train_err"), strict=True):
        plane.draw_panel(fig, ax, data, metric)
    plt.close(fig)
    for key, value in copies.items():
        np.testing.assert_array_equal(data[key], value, err_msg=key)


def test_a_non_square_plane_is_drawn_with_x_across_and_y_up(monkeypatch):
    """Values [i_x, j_y] on 5 x 3 nodes: contourf gets rows of y and columns of x, so a value
    that grows with x only is drawn growing to the right (a transposed drawing fails here)."""
    import matplotlib.pyplot as plt

    x, y = np.linspace(0.0, 8.0, 5), np.linspace(0.0, 3.0, 3)
    values = np.repeat(np.linspace(1.0, 40.0, 5)[:, None], 3, axis=1)  # [i_x, j_y]: x only
    data = {"x": x, "y": y, "test_err": values, "config": {}}
    drawn = {}
    contourf = plt.Axes.contourf

    def spy(ax, *args, **kwargs):
        drawn["x"], drawn["y"], drawn["z"] = args[:3]
        return contourf(ax, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "contourf", spy)
    fig, ax = plt.subplots()
    plane.draw_panel(fig, ax, data, "test_err", vmax=40.0)
    plt.close(fig)
    assert drawn["z"].shape == (3, 5)  # (rows: y, columns: x)
    np.testing.assert_array_equal(drawn["x"], x)
    np.testing.assert_array_equal(drawn["y"], y)
    for i in range(5):
        for j in range(3):
            assert drawn["z"][j, i] == pytest.approx(values[i, j])


def test_log_levels_between_floor_and_vmax():
    values = np.array([[0.05, 1.0, np.nan], [7.0, 2.0, 0.3]])
    levels = plane.log_levels(values, vmax=5.0, n=9)
    assert len(levels) == 9
    assert levels[0] == pytest.approx(0.05) and levels[-1] == pytest.approx(5.0)
    np.testing.assert_allclose(np.diff(np.log10(levels)), np.log10(100) / 8)
    # floor never below vmax / 1000, also when the data reach 0
    assert plane.log_levels(np.array([0.0, 3.0]), vmax=40.0)[0] == pytest.approx(0.04)
    assert plane.log_levels(np.array([1e-6, 3.0]), vmax=5.0)[0] == pytest.approx(0.005)
    # every value above vmax: the floor falls back to vmax / 1000
    assert plane.log_levels(np.array([9.0, 50.0]), vmax=5.0)[0] == pytest.approx(0.005)


def test_clip_to_levels():
    values = np.array([[0.05, 1.0, np.nan], [7.0, 2.0, 0.001]])
    before = values.copy()
    levels = plane.log_levels(values, vmax=5.0, n=5)
    clipped = plane.clip_to_levels(values, levels)
    np.testing.assert_array_equal(clipped.mask, np.isnan(values))
    assert clipped[1, 0] == pytest.approx(5.0)  # above vmax -> vmax
    assert clipped[1, 2] == pytest.approx(levels[0])  # below the floor -> floor
    assert clipped[0, 1] == 1.0
    np.testing.assert_array_equal(values, before)


def test_title_from_config():
    assert title({"model": "VGG16", "data": "cifar100"}, "Plane") == "Plane: VGG16 on cifar100"
    assert title({"model": {"name": "VGG16"}, "data": {"name": "synthetic"}}, "P").endswith(
        "(SYNTHETIC DATA)"
    )
    assert title({}, "Plane") == "Plane"


def test_point_styles_are_distinct():
    names = ["SGD", "SWA", "FGE 1", "epoch 125", "w0"]
    markers = {plane.point_style(n)["marker"] for n in names}
    assert len(markers) == len(names)


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PLOTS / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, inputs) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "truncated.npz").write_bytes(inputs["line"].read_bytes()[:200])
    (d / "text.npz").write_text("not an archive\n")
    run = RunPaths(d / "run")
    run.root.mkdir()
    run.metrics.write_text('{"epoch": 1, "test_acc": 5.0}\n')
    run.summary.write_text('{"method": "sgd", "lr_cu')  # cut short
    return {"missing": d / "missing.npz", **inputs, **{p.stem: p for p in d.iterdir()}}


@pytest.mark.parametrize(
    ("script", "given", "needle"),
    [
        ("line", "missing", "missing.npz: no such file; expected an .npz of python -m swa_repro.analysis line"),
        ("line", "truncated", "truncated.npz is not an .npz archive; expected an .npz of"),
        ("line", "text", "text.npz is not an .npz archive"),
        ("line", "plane", "plane.npz has no distance, sgd_distance; expected an .npz of python -m swa_repro.analysis line"),
        ("plane", "line", "line.npz has no x, y; expected an .npz of python -m swa_repro.analysis plane"),
        ("trajectory", "plane", "plane.npz has no trajectory_xy"),
        ("rays", "fge", "fge.npz has no distances, origins"),
        ("fge", "rays", "rays.npz has no sample_test_acc, ensemble_test_acc"),
        ("fge", "missing", "missing.npz: no such file"),
        ("convergence", "missing", "missing.npz/metrics.jsonl: no such file; expected a finished run directory"),
        ("convergence", "run", "run/summary.json is not valid JSON"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_error(script, given, needle, bad_inputs, tmp_path):
    out = tmp_path / "figure.png"
    result = _run_script(script, str(bad_inputs[given]), "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0] and str(bad_inputs[given]) in lines[0]
    assert not out.exists() and not out.with_suffix(".pdf").exists()


def test_bad_metric_and_vmax_are_one_line_errors(inputs, tmp_path):
    out = ["--out", str(tmp_path / "figure.png")]
    result = _run_script("rays", str(inputs["rays"]), "--metrics", "test_eror", *out)
    assert result.returncode == 2 and "rays.npz has no test_eror" in result.stderr
    result = _run_script("plane", str(inputs["plane"]), "--vmax", "test_err=high", *out)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --vmax takes METRIC=VALUE, got 'test_err=high'"
