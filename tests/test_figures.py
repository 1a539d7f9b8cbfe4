"""make figures-demo at test size: every training run, analysis and figure, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from swa_repro import figures, layout
from swa_repro.compose import compose_config
from swa_repro.config_check import ConfigError
from swa_repro.layout import RunPaths
from swa_repro.run_files import RunFiles

TINY = "data.train_size=128 data.test_size=64 optim.batch_size=64 swag.samples=2 ema.decays=[0.99]"
FIGURES = [
    "convergence",
    "fig1_plane_sgd_swa",
    "fig1_plane_fge",
    "fge_ensemble",
    "fig2_trajectories",
    "line_swa_sgd",
    "widths_rays",
    "hessian_spectrum",
    "around_filter_normalised",
]


def test_figures_demo_end_to_end_and_idempotent(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "figures"
    command = [
        sys.executable, "-m", "swa_repro.figures", "--demo", "--runs", str(runs), "--out", str(out),
        "--flatness", "smoke", "--extra", TINY, "--grid", "3", "--device", "cpu",
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

    # the SGD solution of the figures continues the SWA run's last pre-averaging state (epoch 15)
    continuation = RunPaths(layout.run_dir(runs, "synthetic", "small_cnn", "sgd_from_epoch15", 0))
    assert json.loads(continuation.metrics.read_text().splitlines()[0])["epoch"] > 15
    data = layout.analyses_dir(runs, "synthetic/small_cnn", 0)
    with np.load(data / "plane.npz") as plane:
        assert plane["done"].all() and plane["test_err"].shape == (3, 3)
        assert list(plane["point_names"][:3]) == ["epoch 15", "SGD", "SWA"]
    with np.load(data / "trajectory_cyclic.npz") as trajectory:
        assert list(trajectory["trajectory_epochs"]) == list(range(16, 21))
    table = out / "sharpness_synthetic.md"  # the flatness table beside the figures
    assert str(table) in first.stdout and "| SWA |" in table.read_text()

    # a second invocation trains and computes nothing, and redraws the same figures
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "swa_repro.train" not in second.stdout and "swa_repro.analysis" not in second.stdout
    assert all(str(out / f"{name}.png") in second.stdout for name in FIGURES)

    # other grid sizes than the stored results: refused, nothing overwritten
    before = (data / "plane.npz").read_bytes()
    third = subprocess.run(
        [*command[:-4], "--grid", "5", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert third.returncode == 2, third.stdout[-2000:] + third.stderr[-2000:]
    assert third.stderr.strip().splitlines() == [
        f"error: {data / 'plane.npz'} was computed with grid_points=3, not 5: move it away to "
        "recompute, or ask for the settings it has"
    ]
    assert (data / "plane.npz").read_bytes() == before


def test_continuations_inherit_the_runs_settings(tmp_path):
    """A run trained with overrides beyond its experiment file (data sizes, optimiser, speed,
    an added key) hands them to the figures' continuations; their own keys stay theirs."""
    trained = [
        "experiment=synthetic/small_cnn_sgd", "data.train_size=256", "optim.lr_init=0.07",
        "speed.bf16=true", "checkpoint.keep_epochs=[]", "epochs=3", "budget=3", "seed=4",
        "+data.note=moved here/x",
    ]  # fmt: skip
    run_dir = tmp_path / "sgd"
    run_dir.mkdir()
    RunFiles(run_dir).write_config(compose_config(trained))
    base = figures.continuation_base("synthetic/small_cnn_sgd", run_dir)
    assert base[0] == "experiment=synthetic/small_cnn_sgd"
    assert sorted(base[1:]) == sorted(
        [
            "data.train_size=256",
            "optim.lr_init=0.07",
            "speed.bf16=true",
            '+data.note="moved here/x"',
        ]
    )
    cfg = compose_config([*base, "schedule=constant", "schedule.lr=0.01", "epochs=20", "seed=0"])
    assert (cfg.data.train_size, cfg.optim.lr_init, cfg.speed.bf16) == (256, 0.07, True)
    assert (cfg.schedule.name, cfg.epochs, cfg.seed) == ("constant", 20, 0)
    assert cfg.data.note == "moved here/x"

    RunFiles(run_dir).config.write_text("data: {train_size: [1, {a: 2}]}\n")
    with pytest.raises(ConfigError, match="cannot reproduce the settings of"):
        figures.continuation_base("synthetic/small_cnn_sgd", run_dir)


def test_missing_runs_are_one_line_errors_with_the_command_that_trains_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        figures.main(["--runs", str(tmp_path / "runs"), "--setup", "cifar100/vgg16", "--seed", "2"])
    assert info.value.code == 2
    sgd_run = layout.run_dir(tmp_path / "runs", "cifar100", "vgg16", "sgd", 2)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {sgd_run} is not a finished run; train it first: "
        f"make reproduce-cifar100 MODELS=vgg16 SEEDS=2 RUNS={tmp_path / 'runs'}"
    ]
    assert not (tmp_path / "runs").exists()


def test_steps_run_in_process_with_the_commands_exit_codes(tmp_path, capsys, monkeypatch):
    """A step returns its command's exit code (a message: 1, printed) and leaves sys.argv and
    sys.path as they were; a stopped training step's 75 / 130 end the figures with that code, any
    other failure with one line and exit 1."""
    argv, path = list(sys.argv), list(sys.path)
    assert figures.in_process(["-m", "swa_repro.analysis", "nosuch"]) == 2
    script = tmp_path / "step.py"
    script.write_text("import sys\nsys.exit('error: a message' if sys.argv[1] == 'x' else 0)\n")
    assert figures.in_process([str(script), "x"]) == 1
    assert figures.in_process([str(script), "y"]) == 0
    assert (sys.argv, sys.path) == (argv, path)
    err = capsys.readouterr().err
    assert "analysis name 'nosuch' unknown" in err and "error: a message" in err

    for code, expected in ((75, 75), (130, 130), (3, "error: step failed (exit 3); rerun")):
        monkeypatch.setattr(figures, "in_process", lambda argv, code=code: code)
        with pytest.raises(SystemExit) as stop:
            figures.run([sys.executable, "-m", "swa_repro.train", "epochs=1"])
        assert str(stop.value.code).startswith(str(expected))
