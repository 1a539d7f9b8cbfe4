"""make figures-demo at test size: every training run, analysis and figure, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from matplotlib.image import imread

TINY = "data.train_size=192 data.test_size=96 optim.batch_size=64"
FIGURES = [
    "convergence",
    "fig1_plane_sgd_swa",
    "fig1_plane_fge",
    "fge_ensemble",
    "fig2_trajectories",
    "line_swa_sgd",
    "widths_rays",
]


def test_figures_demo_end_to_end_and_idempotent(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "figures"
    command = [
        sys.executable, "-m", "swa_repro.figures", "--demo", "--runs", str(runs), "--out", str(out),
        "--extra", TINY, "--grid", "3", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for name in FIGURES:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert pdf.stat().st_size > 1000, name
        image = imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01, name
        assert str(png) in first.stdout

    setup = runs / "synthetic" / "small_cnn"
    # the SGD solution of the figures continues the SWA run's last pre-averaging state (epoch 15)
    continuation = json.loads(
        (setup / "sgd_from_epoch15" / "seed0" / "metrics.jsonl").read_text().splitlines()[0]
    )
    assert continuation["epoch"] > 15
    data = runs / "analyses" / "synthetic" / "small_cnn" / "seed0"
    with np.load(data / "plane.npz") as plane:
        assert plane["done"].all() and plane["test_err"].shape == (3, 3)
        assert list(plane["point_names"][:3]) == ["epoch 15", "SGD", "SWA"]
    with np.load(data / "trajectory_cyclic.npz") as trajectory:
        assert list(trajectory["trajectory_epochs"]) == list(range(16, 21))

    # a second invocation trains and computes nothing, and redraws the same figures
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "swa_repro.train" not in second.stdout and "swa_repro.analysis" not in second.stdout
    assert all(str(out / f"{name}.png") in second.stdout for name in FIGURES)
