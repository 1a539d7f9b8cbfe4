"""Bad input stops the run before any epoch: non-zero exit (2 for our checks) and a one-line
"error: ..." on stderr, no checkpoints.

Pure configuration checks run in-process through validate_config; the command-line checks run
the entry points' own functions in-process (train.cli for `python -m swa_repro.train`: the
override checks, Hydra, train_and_report), and a representative few (data on disk, a
multirun, two other entry points) through a real process.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_DATA, run_main, tiny
from helpers import launch
from swa_repro import aggregate, bench, demo, figures, layout, sweep
from swa_repro import train as swa_train
from swa_repro.cli import EXIT_USER_ERROR
from swa_repro.compose import compose_config
from swa_repro.config_check import ConfigError, validate_config
from swa_repro.data import load_data
from swa_repro.layout import RunPaths

FAST = ["epochs=2", "budget=2", "method.swa_start=1", "progress=false"]
FAST_SYNTHETIC = tiny(*FAST, base=TINY_DATA)
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _run_cli(runs: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`python -m swa_repro.train OVERRIDES paths.runs=RUNS`, in-process (train.cli)."""
    return run_main(swa_train.cli, [*overrides, f"paths.runs={runs}"])


def _run_cli_process(runs: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """The same through a real `python -m swa_repro.train` process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = ["-m", "swa_repro.train", *overrides, f"paths.runs={runs}"]
    return launch.run(args, Path.cwd(), env, timeout=120)


def _assert_stopped_before_training(proc: subprocess.CompletedProcess, runs: Path) -> None:
    assert not any(line.startswith("ep ") for line in proc.stdout.splitlines()), proc.stdout
    assert not list(runs.rglob("checkpoints")), list(runs.rglob("*"))
    assert not list(runs.rglob("metrics.jsonl"))


def _assert_user_error(proc: subprocess.CompletedProcess, runs: Path) -> str:
    """Exit 2, exactly one stderr line starting with 'error:'; returns that line."""
    assert proc.returncode == EXIT_USER_ERROR, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    _assert_stopped_before_training(proc, runs)
    return lines[0]


def _write_cifar10(root: Path, per_file: int = 4) -> Path:
    """A tiny CIFAR-10 folder in the real on-disk format (python pickles, protocol 4)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        entry = {
            "data": rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=per_file)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=4)
    return folder


# --------------------------------------------------------------------------- through the CLI


def test_cli_unimportable_model_target(tmp_path):
    proc = _run_cli_process(tmp_path, [*FAST_SYNTHETIC, "model._target_=nosuch.nets.Net"])
    line = _assert_user_error(proc, tmp_path)
    assert "model._target_=nosuch.nets.Net cannot be imported" in line


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model=foo", ["model/foo", "preresnet164", "small_cnn", "wrn28x10"]),
        ("experiment=synthetic/nope", ["experiment/synthetic/nope", "synthetic/small_cnn_swa"]),
        ("foo=1", ["unknown config key foo"]),
        ("optim.lr=0.05", ["unknown config key optim.lr", "did you mean optim.lr_init?"]),
        ("+foo=1", ["+foo=1 adds the key foo, which nothing reads"]),
        ("+optim.lr=0.05", ["nothing reads", "did you mean optim.lr_init?"]),
    ],
)
def test_cli_unknown_group_option_or_key(tmp_path, override, named):
    line = _assert_user_error(_run_cli(tmp_path, [*FAST_SYNTHETIC, override]), tmp_path)
    assert all(text in line for text in named), line


def test_cli_swa_start_that_never_collects_a_model(tmp_path):
    """A real swa_start: (epoch - swa_start) is never an integer, no model would be averaged and
    the SWA readings would be the SGD model's."""
    overrides = [*FAST_SYNTHETIC, "epochs=4", "budget=3", "method.swa_start=2.5"]
    line = _assert_user_error(_run_cli(tmp_path, overrides), tmp_path)
    assert "never collects a model" in line and "integer swa_start" in line


@pytest.mark.parametrize("damaged", ["summary.json", "config.yaml"])
def test_cli_damaged_run_file_is_one_line_and_kept(tmp_path, damaged):
    """Relaunching a run whose summary.json or config.yaml is damaged names the file, changes nothing."""
    run_dir = layout.run_dir(tmp_path, "synthetic", "small_cnn", "swa", 0)
    run_dir.mkdir(parents=True)
    config = OmegaConf.to_yaml(_compose(*FAST_SYNTHETIC, f"paths.runs={tmp_path}"), resolve=True)
    files = {"config.yaml": config, "summary.json": '{"status": "finished"}\n'}
    files[damaged] = files[damaged][: len(files[damaged]) // 2] + "\t{["
    for name, text in files.items():
        (run_dir / name).write_text(text)
    line = _assert_user_error(_run_cli(tmp_path, FAST_SYNTHETIC), tmp_path)
    assert str(run_dir / damaged) in line
    assert {p.name: p.read_text() for p in run_dir.iterdir() if p.name in files} == files


def test_cli_swa_start_after_last_epoch(tmp_path):
    proc = _run_cli(tmp_path, tiny("epochs=2", "budget=2", "method.swa_start=3", base=TINY_DATA))
    line = _assert_user_error(proc, tmp_path)
    assert "method.swa_start" in line


def test_cli_num_classes_mismatch(tmp_path):
    proc = _run_cli(
        tmp_path,
        [
            "data=cifar10",
            "data.num_classes=100",
            "data.download=false",
            f"data.root={tmp_path / 'data'}",
            *FAST,
        ],
    )
    line = _assert_user_error(proc, tmp_path)
    assert "data.num_classes" in line and "cifar10" in line


def test_cli_missing_data_folder_without_download(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    proc = _run_cli_process(
        runs, ["data=cifar10", f"data.root={empty}", "data.download=false", *FAST]
    )
    line = _assert_user_error(proc, runs)
    assert str(empty / "cifar-10-batches-py") in line
    assert "data.download" in line
    assert list(empty.iterdir()) == []  # nothing downloaded


def test_tiny_cifar10_folder_is_valid(tmp_path):
    """The fixture's format is right: the intact folder loads (so the next test sees truncation only)."""
    _write_cifar10(tmp_path)
    cfg = OmegaConf.create(
        {"name": "cifar10", "num_classes": 10, "root": str(tmp_path), "download": False}
    )
    splits = load_data(cfg)
    assert tuple(splits.train_x.shape) == (20, 3, 32, 32) and tuple(splits.test_x.shape) == (
        4,
        3,
        32,
        32,
    )


def test_cli_truncated_cifar_batch(tmp_path):
    root = tmp_path / "data"
    folder = _write_cifar10(root)
    bad = folder / "data_batch_1"
    payload = bad.read_bytes()
    bad.write_bytes(payload[: len(payload) // 2])
    runs = tmp_path / "runs"
    proc = _run_cli(runs, ["data=cifar10", f"data.root={root}", "data.download=false", *FAST])
    line = _assert_user_error(proc, runs)
    assert str(bad) in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda(tmp_path):
    proc = _run_cli(tmp_path, [*FAST_SYNTHETIC, "device=cuda"])
    line = _assert_user_error(proc, tmp_path)
    assert "cuda" in line.lower()


# --------------------------------------------------------------------------- validate_config in-process


def _compose(*overrides: str):
    return compose_config(list(overrides))


def _config_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def test_default_config_is_valid():
    validate_config(_compose(*FAST_SYNTHETIC))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model._target_=nosuch.Net"], "model._target_=nosuch.Net cannot be imported"),
        (["+model.depth=3"], "SmallCNN does not take these arguments"),
        (["data.name=foo"], "data.name"),
        (["method.name=foo"], "method.name"),
        (["schedule.name=foo"], "schedule.name"),
        (["method.swa_start=0"], "method.swa_start"),
        (["method.swa_start=3"], "method.swa_start"),  # epochs + 1
        (["method.swa_lr=0"], "method.swa_lr"),
        (["method.swa_lr=-1"], "method.swa_lr"),
        (["optim.lr_init=0"], "optim.lr_init"),
        (["optim.batch_size=0"], "optim.batch_size"),
        (["eval_every=0"], "eval_every"),
        (["checkpoint.keep_every=-1"], "checkpoint.keep_every must be an integer >= 0"),
        (["epochs=4", "budget=3", "method.swa_start=2.5"], "never collects a model"),
        (["optim.momentum=abc"], "optim.momentum must be a number in [0, 1)"),
        (["optim.weight_decay=abc"], "optim.weight_decay must be a number >= 0"),
        (["optim.weight_decay=-1"], "optim.weight_decay must be a number >= 0"),
        (["checkpoint.keep_epochs=5"], "checkpoint.keep_epochs must be a list"),
        (["method.budget_readings=1.0"], "method.budget_readings must be a list"),
        (["method=sgd", "method.budget_readings=1.0"], "method.budget_readings must be a list"),
        (["seed=abc"], "seed must be an integer"),
        (["seed=-1"], "seed must be an integer >= 0, got -1"),
        (["optim.lr_init=inf"], "optim.lr_init must be a positive number, got inf"),
        (["optim.momentum=1.5"], "optim.momentum must be a number in [0, 1), got 1.5"),
        (["data.seed=abc"], "data.seed must be an integer"),
        (["data.signal=abc"], "data.signal must be a number >= 0"),
        (["data.noise=-1"], "data.noise must be a number >= 0"),
        (["data.label_noise=2"], "data.label_noise must be a fraction in [0, 1]"),
        (["data.label_noise=-0.1"], "data.label_noise must be a fraction in [0, 1]"),
        (["progress=maybe"], "progress must be true or false"),
        (["device=mps"], "device must be auto, cpu, cuda or cuda:N, got 'mps'"),
        (["device=meta"], "device must be auto, cpu, cuda or cuda:N, got 'meta'"),
        (["device=1.5"], "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_validate_rejects(overrides, named):
    message = _config_error(_compose(*FAST_SYNTHETIC, *overrides))
    assert named in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=wrn28x10", "model.bn_weight_init=normal"],
            "model.bn_weight_init must be one of uniform, ones, got 'normal'",
        ),
        (
            ["model=preresnet164", "+model.bn_weight_init=ones"],
            "model._target_=swa_repro.models.PreResNet does not take these arguments",
        ),
        (["method.swa_include_start=maybe"], "method.swa_include_start must be true or false"),
    ],
)
def test_validate_rejects_init_and_averaging_options(overrides, message):
    cfg = _compose(*FAST_SYNTHETIC, *overrides)
    assert message in _config_error(cfg)


@pytest.mark.parametrize("start", ["2", "2.0", "1", "4"])
def test_validate_accepts_swa_start_that_collects(start):
    validate_config(_compose(*FAST_SYNTHETIC, "epochs=4", "budget=3", f"method.swa_start={start}"))


def test_shortened_experiment_says_how_to_clear_keep_epochs():
    shortened = ["experiment=synthetic/small_cnn_swa", "epochs=3", "method.swa_start=2"]
    message = _config_error(_compose(*shortened))
    assert "got 15" in message and "checkpoint.keep_epochs=[]" in message
    validate_config(_compose(*shortened, "checkpoint.keep_epochs=[]"))


def test_validate_rejects_cuda_index_beyond_the_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    validate_config(_compose(*FAST_SYNTHETIC, "device=cuda:1"))
    message = _config_error(_compose(*FAST_SYNTHETIC, "device=cuda:2"))
    assert "device=cuda:2" in message and "this machine has 2 GPU(s)" in message


def test_validate_rejects_swa_start_past_default_epochs():
    cfg = _compose()
    message = _config_error(_compose(f"method.swa_start={cfg.epochs + 1}"))
    assert "method.swa_start" in message


def test_validate_rejects_a_model_class_count_other_than_the_data():
    message = _config_error(_compose("model=preresnet110", "model.num_classes=100"))
    assert "model.num_classes=100 but the data have data.num_classes=10" in message


def test_validate_rejects_num_classes_mismatch():
    message = _config_error(_compose("data=cifar10", "data.num_classes=100"))
    assert "data.num_classes" in message


def test_validate_rejects_download_that_is_not_a_bool():
    message = _config_error(_compose("data=cifar10", "data.download=maybe"))
    assert "data.download must be true or false" in message


def test_validate_rejects_data_root_that_is_a_file(tmp_path):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    message = _config_error(_compose("data=cifar10", f"data.root={a_file}"))
    assert "data.root" in message and str(a_file) in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_validate_rejects_cuda_without_cuda():
    message = _config_error(_compose("device=cuda"))
    assert "cuda" in message.lower()


def test_a_failing_cell_does_not_stop_a_multirun(tmp_path):
    """The SWA cell is invalid (swa_start beyond the run); the SGD cell after it still runs."""
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable, "-m", "swa_repro.train", "-m", "method=swa,sgd", "method.swa_start=99",
            *tiny("epochs=2", "budget=2", "data.train_size=128", "data.test_size=64", base=TINY_DATA),
            f"paths.runs={runs}",
        ],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert "error: method.swa_start must lie in 1..epochs=2" in proc.stderr
    failed = json.loads(
        RunPaths(layout.run_dir(runs, "synthetic", "small_cnn", "swa", 0)).failed.read_text()
    )
    assert failed["exit_code"] == 2 and "swa_start" in failed["error"]
    assert RunPaths(layout.run_dir(runs, "synthetic", "small_cnn", "sgd", 0)).summary.is_file()


IN_A_PROCESS = [
    ["swa_repro.sweep", "table1", "--dataset", "cifar100", "--seeds", "a", "--dry-run"],
    ["swa_repro.demo", "model=nosuch"],
]
ENTRY_POINTS = {  # what `python -m MODULE` runs
    "swa_repro.sweep": sweep.main,
    "swa_repro.figures": figures.main,
    "swa_repro.aggregate": aggregate.main,
    "swa_repro.demo": lambda: demo.main(sys.argv[1:]),
    "swa_repro.bench": bench.main,
}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["swa_repro.sweep", "table1", "--dataset", "cifar100", "--seeds", "a", "--dry-run"],
            "seeds must be",
        ),
        (
            [
                "swa_repro.sweep",
                "table1",
                "--dataset",
                "cifar100",
                "--extra",
                "nosuch=1",
                "--dry-run",
            ],
            "nosuch",
        ),
        (["swa_repro.figures", "--setup", "foo"], "--setup must be <dataset>/<model>"),
        (
            ["swa_repro.aggregate", "table1", "--dataset", "cifar10", "--seeds", "0,x"],
            "seeds must be",
        ),
        (["swa_repro.demo", "model=nosuch"], "valid options"),
        (["swa_repro.demo", "optim.lr=0.1"], "did you mean optim.lr_init?"),
        (["swa_repro.bench", "--models", "foo"], "unknown --models name 'foo'"),
        (["swa_repro.bench", "--speed", "nope"], "valid names: faithful, fast"),
        (
            ["swa_repro.aggregate", "table1", "--dataset", "cifar10", "--paper", "/nope.yaml"],
            "--paper /nope.yaml: no such file",
        ),
    ],
)
def test_other_entry_points_fail_with_one_line(argv, message, tmp_path):
    """In-process (each entry point's main as `python -m` calls it), two through a real process."""
    if argv in IN_A_PROCESS:
        proc = subprocess.run(
            [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
    else:
        proc = run_main(ENTRY_POINTS[argv[0]], argv[1:], cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
