"""End-to-end runs on synthetic data: the real CLI (subprocess) and train(cfg, run_dir) in-process."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import computed_once
from helpers import launch
from swa_repro import layout
from swa_repro.compose import compose_config
from swa_repro.layout import RunPaths
from swa_repro.train import train

SWA_OVERRIDES = [
    "data.train_size=512",
    "data.test_size=256",
    "epochs=6",
    "budget=4",
    "method.swa_start=3",
    "eval_every=2",
    "optim.batch_size=64",
    "progress=false",
    "swag.samples=2",  # the end's SWAG model average: 2 samples, not 30
]
SGD_OVERRIDES = [
    "method=sgd",
    "data.train_size=512",
    "data.test_size=256",
    "epochs=4",
    "budget=4",
    "eval_every=2",
    "optim.batch_size=64",
    "progress=false",
]
# small and quick, for the in-process runs
TINY_OVERRIDES = [
    "data.train_size=256",
    "data.test_size=128",
    "epochs=3",
    "budget=2",
    "method.swa_start=2",
    "eval_every=1",
    "optim.batch_size=64",
    "progress=false",
    "swag.samples=2",  # the end's SWAG model average: 2 samples, not 30
]
SGD_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "test_nll",
    "test_ece",
)
SWA_KEYS = ("swa_test_loss", "swa_test_acc", "swa_test_nll", "swa_test_ece", "n_averaged")


def _run_cli(runs: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """A real `python -m swa_repro.train` process (forked from the preloaded server)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = ["-m", "swa_repro.train", *overrides, f"paths.runs={runs}"]
    return launch.run(args, Path.cwd(), env, timeout=300)


def _compose(*overrides: str):
    return compose_config(list(overrides))


def _read_metrics(run_dir: Path) -> list[dict]:
    lines = RunPaths(run_dir).metrics.read_text().splitlines()
    return [json.loads(line) for line in lines]


def _paper_lr(epoch: int, lr_init: float, horizon: float, ratio: float) -> float:
    """docs/protocol.md, Schedule, written out independently of swa_repro.schedule."""
    t = epoch / horizon
    if t <= 0.5:
        return lr_init
    if t <= 0.9:
        return lr_init * (1 - (1 - ratio) * (t - 0.5) / 0.4)
    return lr_init * ratio


def _check_plausible(record: dict, prefix: str) -> None:
    assert 0.0 <= record[f"{prefix}acc"] <= 100.0
    for key in ("loss", "nll"):
        value = record[f"{prefix}{key}"]
        assert math.isfinite(value) and value > 0, (prefix + key, value)
    assert 0.0 <= record[f"{prefix}ece"] <= 1.0


# --------------------------------------------------------------------------- SWA through the CLI


@pytest.fixture(scope="session")
def swa_run(shared_dir):
    """The SWA run through the CLI, once per session (shared by the pytest-xdist workers)."""

    def run_cli(folder: Path) -> None:
        proc = _run_cli(folder / "runs", SWA_OVERRIDES)
        (folder / "cli.json").write_text(json.dumps([proc.returncode, proc.stdout, proc.stderr]))

    folder = computed_once(shared_dir, "e2e_swa_cli", run_cli)
    runs = folder / "runs"
    code, out, err = json.loads((folder / "cli.json").read_text())
    proc = subprocess.CompletedProcess(["swa_repro.train", *SWA_OVERRIDES], code, out, err)
    return proc, runs, layout.run_dir(runs, "synthetic", "small_cnn", "swa", 0)


def test_swa_cli_exits_zero_and_labels_synthetic(swa_run):
    proc, _, run_dir = swa_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SYNTHETIC" in proc.stdout
    assert run_dir.is_dir()


def test_swa_cli_config_yaml_is_resolved_with_overrides(swa_run):
    proc, runs, run_dir = swa_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = RunPaths(run_dir).config.read_text()
    assert "${" not in text
    cfg = OmegaConf.load(RunPaths(run_dir).config)
    assert cfg.data.name == "synthetic"
    assert cfg.data.train_size == 512 and cfg.data.test_size == 256
    assert cfg.epochs == 6 and cfg.budget == 4
    assert cfg.method.name == "swa" and cfg.method.swa_start == 3
    assert cfg.eval_every == 2 and cfg.optim.batch_size == 64
    assert cfg.progress is False
    assert cfg.paths.runs == str(runs)
    assert cfg.name == "synthetic/small_cnn/swa/seed0"


def test_swa_cli_metrics_lines(swa_run):
    proc, _, run_dir = swa_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _read_metrics(run_dir)
    # after epoch 1, every eval_every (2, 4, 6), the last (6) and budget epochs 4, 5 (=floor(4*1.25)), 6
    assert [m["epoch"] for m in metrics] == [1, 2, 4, 5, 6]
    swa_start = 3
    for m in metrics:
        for key in SGD_KEYS:
            assert key in m, (m["epoch"], key)
        _check_plausible(m, "test_")
        assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
        assert 0.0 <= m["train_acc"] <= 100.0
        if m["epoch"] >= swa_start:
            for key in SWA_KEYS:
                assert key in m, (m["epoch"], key)
            _check_plausible(m, "swa_test_")
            assert m["n_averaged"] == m["epoch"] - swa_start + 1
        else:
            assert not any(key in m for key in SWA_KEYS), m
        # the LR of the epoch: paper schedule with T = swa_start, r = swa_lr / lr_init = 0.05 / 0.1
        assert m["lr"] == pytest.approx(_paper_lr(m["epoch"] - 1, 0.1, 3.0, 0.5), rel=1e-12)
    assert metrics[-1]["train_acc"] > 10.0  # above chance (10 classes)


def test_swa_cli_summary(swa_run):
    proc, _, run_dir = swa_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(RunPaths(run_dir).summary.read_text())
    metrics = _read_metrics(run_dir)
    last = metrics[-1]
    by_epoch = {m["epoch"]: m for m in metrics}

    assert summary["status"] == "finished"
    assert summary["synthetic"] is True
    assert summary["epochs"] == 6 and summary["budget"] == 4

    sgd, swa = summary["final"]["sgd"], summary["final"]["swa"]
    for key in ("acc", "loss", "nll", "ece"):
        assert sgd[key] == last[f"test_{key}"]
        assert swa[key] == last[f"swa_test_{key}"]
    assert sgd["train_loss"] == last["train_loss"] and sgd["train_acc"] == last["train_acc"]
    assert swa["n_averaged"] == last["n_averaged"] == 4

    budgets = summary["budgets"]
    assert set(budgets) == {"1", "1.25", "1.5"}
    assert {label: r["epoch"] for label, r in budgets.items()} == {"1": 4, "1.25": 5, "1.5": 6}
    for reading in budgets.values():
        record = by_epoch[reading["epoch"]]
        assert reading["test_acc"] == record["swa_test_acc"]
        assert reading["test_nll"] == record["swa_test_nll"]

    lr_curve = summary["lr_curve"]
    assert len(lr_curve) == 6
    expected = [_paper_lr(e, 0.1, 3.0, 0.5) for e in range(6)]
    assert lr_curve == pytest.approx(expected, rel=1e-12)
    assert lr_curve[:2] == [0.1, 0.1] and lr_curve[3:] == pytest.approx([0.05] * 3)


def test_swa_cli_checkpoints(swa_run):
    proc, _, run_dir = swa_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = RunPaths(run_dir).checkpoints
    assert (ckpt / "last.pt").is_file()
    kept = sorted(p.name for p in ckpt.glob("epoch_*.pt"))
    assert kept == ["epoch_0004.pt", "epoch_0005.pt", "epoch_0006.pt"]


# --------------------------------------------------------------------------- SGD through the CLI


def test_sgd_cli_run(tmp_path):
    proc = _run_cli(tmp_path, SGD_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = layout.run_dir(tmp_path, "synthetic", "small_cnn", "sgd", 0)
    summary = json.loads(RunPaths(run_dir).summary.read_text())
    metrics = _read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2, 4]
    assert not any(key in m for m in metrics for key in SWA_KEYS)
    assert summary["status"] == "finished" and summary["synthetic"] is True
    assert summary["final"]["swa"] is None
    assert summary["final"]["sgd"]["acc"] == metrics[-1]["test_acc"]
    assert set(summary["budgets"]) == {"1"}
    assert summary["budgets"]["1"]["epoch"] == 4
    assert summary["budgets"]["1"]["test_acc"] == metrics[-1]["test_acc"]
    # SGD: T = epochs, r = 0.01
    assert summary["lr_curve"] == pytest.approx(
        [_paper_lr(e, 0.1, 4.0, 0.01) for e in range(4)], rel=1e-12
    )
    assert RunPaths(run_dir).last.is_file()
    assert RunPaths(run_dir).kept(4).is_file()


# --------------------------------------------------------------------------- in-process runs


def _check_finished(summary: dict, run_dir: Path) -> list[dict]:
    assert summary["status"] == "finished"
    metrics = _read_metrics(run_dir)
    assert metrics and metrics[-1]["epoch"] == 3
    for m in metrics:
        _check_plausible(m, "test_")
        if "swa_test_acc" in m:
            _check_plausible(m, "swa_test_")
    assert summary["final"]["swa"] is not None
    for value in summary["final"]["swa"].values():
        assert math.isfinite(value)
    assert len(summary["lr_curve"]) == 3
    return metrics


def test_cyclic_schedule_run_in_process(tmp_path):
    cfg = _compose(*TINY_OVERRIDES, "schedule=cyclic", "schedule.a1=0.05", "schedule.a2=0.001")
    summary = train(cfg, tmp_path)
    _check_finished(summary, tmp_path)
    # lr of each epoch = that of its first iteration: t = 1 / c, c = 4 steps (256 / 64)
    first = (1 - 1 / 4) * 0.05 + (1 / 4) * 0.001
    assert summary["lr_curve"] == pytest.approx([first] * 3, rel=1e-12)


def test_constant_schedule_run_in_process(tmp_path):
    cfg = _compose(*TINY_OVERRIDES, "schedule=constant")
    summary = train(cfg, tmp_path)
    _check_finished(summary, tmp_path)
    assert summary["lr_curve"] == pytest.approx([0.1] * 3, rel=1e-12)


def _without_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "time_s"} for m in metrics]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = tmp_path / name
        train(_compose(*TINY_OVERRIDES, f"seed={seed}"), run_dir)
        runs[name] = _without_time(_read_metrics(run_dir))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    assert [m["epoch"] for m in runs["a"]] == [m["epoch"] for m in runs["c"]]


def test_budget_reading_before_any_average_is_labelled_sgd(tmp_path, capsys):
    """Budget epoch 2 comes before swa_start=3: that reading is the SGD model's, and says so."""
    cfg = _compose(*TINY_OVERRIDES, "method.swa_start=3")
    summary = train(cfg, tmp_path / "run")
    assert summary["budgets"]["1"]["model"] == "sgd" and summary["budgets"]["1.5"]["model"] == "swa"
    out = capsys.readouterr().out
    assert "SGD 1 budget (ep 2)" in out and "SWA 1.5 budget (ep 3)" in out
