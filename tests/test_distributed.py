"""Multi-process runs: 2 processes on CPU with the gloo backend, launched by torchrun.

With a model without BatchNorm (per-GPU BN in training makes a run depend on the GPU count),
a 2-process run takes the same steps on the same global batches as one process, so its
weights and averaged weights must equal the single-process ones to float rounding. Every
checkpoint of a distributed run also checks that the ranks hold bitwise identical weights
and averages (Distributed.assert_same), so a run that finishes proves it for every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import swa_of, write_image_folder
from helpers import launch as helpers_launch
from swa_repro import layout
from swa_repro.checkpoint import load_checkpoint
from swa_repro.layout import RunPaths

REPO = Path(__file__).resolve().parent.parent
HELPERS = REPO / "tests" / "helpers"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch(processes: int, overrides: list[str], script: list[str] | None = None):
    """`python -m swa_repro.train` (or a helper script) in `processes` processes."""
    program = script or ["-m", "swa_repro.train"]
    if processes == 1 and script is None:  # one process: forked from the preloaded server
        return helpers_launch.run([*program, *overrides], REPO, ENV, timeout=600)
    command = [*TORCHRUN, str(processes), *program, *overrides]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)


def run_dir(runs: Path) -> Path:
    (summary,) = runs.rglob("summary.json")
    return summary.parent


def imagenet_overrides(root: Path) -> list[str]:
    return [
        "experiment=imagenet/resnet50_swa", "model=small_cnn_nobn",
        f"data.root={root}", "data.num_classes=4", "data.image_size=32", "data.resize=36",
        "data.workers=0", "optim.batch_size=10", "eval_batch_size=5", "epochs=3",
        "method.budget_readings=[2,3]", "eval_every=1", "progress=false",
    ]  # fmt: skip


SYNTHETIC = [
    "data.train_size=300", "data.test_size=90", "epochs=3", "budget=2", "method.swa_start=2",
    "eval_every=1", "optim.batch_size=32", "optim.lr_init=0.01", "method.swa_lr=0.005", "progress=false",
    "swag.samples=2", "ema.decays=[0.999]",
]  # fmt: skip


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    # 25 training images: batches of 10, 10, 5 split 5+5 and 3+2 between two ranks
    return write_image_folder(tmp_path_factory.mktemp("inet") / "imagenet", 5, 5, 2)


@pytest.mark.parametrize("data", ["imagenet", "synthetic"])
def test_two_processes_equal_one(tmp_path, imagenet_root, data):
    overrides = (
        [*imagenet_overrides(imagenet_root), "data.num_classes=5"]
        if data == "imagenet"
        else [*SYNTHETIC, "model=small_cnn_nobn"]
    )
    runs = {}
    for processes in (1, 2):
        result = launch(processes, [*overrides, f"paths.runs={tmp_path / str(processes)}"])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = run_dir(tmp_path / str(processes))
    assert "x 2 processes" in result.stdout
    one, two = (load_checkpoint(RunPaths(runs[p]).last) for p in (1, 2))
    assert int(swa_of(two)["n_averaged"]) == int(swa_of(one)["n_averaged"]) > 1
    for which in (lambda s: s["model"], swa_of):
        for name, value in which(one).items():
            torch.testing.assert_close(which(two)[name], value, rtol=1e-5, atol=1e-6)
    assert list(two["collectors"]) == list(one["collectors"])  # the EMAs (and SWAG) too
    for name, state in one["collectors"].items():
        pairs = zip(_tensors(state), _tensors(two["collectors"][name]), strict=True)
        for a, b in pairs:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    summaries = [json.loads((runs[p] / "summary.json").read_text()) for p in (1, 2)]
    averaged = [k for k in ("swag_diag", "swag") if k in summaries[0]["final"]]
    assert len(averaged) == (2 if data == "synthetic" else 0)
    for key in [*averaged, *summaries[0]["calibration"]]:  # model averages, calibrations
        one_, two_ = (
            summaries[0]["calibration"][key]["test"],
            summaries[1]["calibration"][key]["test"],
        )
        for metric, value in one_.items():
            assert two_[metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, metric)
    assert len(two["rng_ranks"]) == 2 and one["rng_ranks"] is None
    metrics = [
        [json.loads(line) for line in RunPaths(runs[p]).metrics.read_text().splitlines()]
        for p in (1, 2)
    ]
    assert [r["epoch"] for r in metrics[1]] == [r["epoch"] for r in metrics[0]]
    for a, b in zip(*metrics, strict=True):  # sharded evaluation summed = one-process evaluation
        for key in a:
            if key != "time_s":
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    # only rank 0 wrote: one set of files, no second writer's temporary files
    assert sorted(p.name for p in runs[2].iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in runs[1].iterdir() if not p.name.startswith(".")
    )


def test_distributed_bn_refresh_evaluation_and_agreement(tmp_path, imagenet_root):
    out = tmp_path / "check.json"
    result = launch(2, [str(out), str(imagenet_root)], script=[str(HELPERS / "dist_check.py")])
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["bn_seen"] == r["bn_single_seen"] == 51
    # both ranks hold the same combined statistics, equal to one process over all 7 batches
    assert r["bn_ranks"][0] == r["bn_ranks"][1]
    assert r["bn_single"] == pytest.approx(r["bn_ranks"][0], rel=1e-5, abs=1e-6)
    assert max(abs(v) for v in r["bn_single"]) > 0.5  # real statistics, not the reset values
    assert r["eval_ranks"][0] == r["eval_ranks"][1]
    for key, value in r["eval_single"].items():
        assert r["eval_ranks"][0][key] == pytest.approx(value, rel=1e-6), key
    assert r["agree_errors"] == ["rank 0 refuses"] * 2
    assert r["agree_values"] == ["chosen on rank 0"] * 2
    assert r["disagreement_ranks"] == [True, True]
    # the ImageFolder trees are listed by rank 0 alone and handed to rank 1 (its errors too)
    assert r["folder_scans"] == [1, 0]
    assert r["folder_samples"][0] == r["folder_samples"][1]
    expected = sorted(str(p) for p in imagenet_root.rglob("*") if p.is_file())
    assert sorted(path for path, _ in r["folder_samples"][0]) == expected
    assert r["folder_errors"][0] == r["folder_errors"][1]
    assert "imagenet-missing not found" in r["folder_errors"][0]


def test_a_preempted_distributed_run_resumes_exactly(tmp_path):
    """SIGTERM to rank 1 alone at step 5: the ranks agree to stop at the next check (step 20),
    checkpoint mid-epoch and exit 75; the relaunch ends bitwise equal to an uninterrupted run.
    The model has BatchNorm: the run also checks, at every checkpoint, that the ranks hold the
    same BN buffers (synchronised from rank 0), and its last SWA BN refresh, made by two ranks,
    equals one process refreshing the same average over the same batches."""
    overrides = [*SYNTHETIC, "data.train_size=400", "optim.batch_size=16", "epochs=2"]  # 25 steps
    whole = launch(2, [*overrides, f"paths.runs={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    check_swa_bn_refresh(run_dir(tmp_path / "whole"))
    runs = tmp_path / "stopped"
    crash = [str(HELPERS / "crash_run.py"), "step:5", "TERM", "--rank", "1", "--"]
    stopped = launch(2, [*overrides, f"paths.runs={runs}"], script=crash)
    assert stopped.returncode != 0
    assert "stopped by a stop signal to another rank at epoch 1 step 20" in stopped.stderr
    last = RunPaths(layout.run_dir(runs, "synthetic", "small_cnn", "swa", 0)).last
    assert last.is_file()
    state = load_checkpoint(last)
    assert (state["epoch"], state["step"]) == (0, 20) and len(state["rng_ranks"]) == 2
    resumed = launch(2, [*overrides, f"paths.runs={runs}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    a = load_checkpoint(RunPaths(run_dir(tmp_path / "whole")).last)
    b = load_checkpoint(RunPaths(run_dir(runs)).last)
    for which in ("model", "collectors", "optimizer"):
        flat_a, flat_b = _tensors(a[which]), _tensors(b[which])
        assert len(flat_a) == len(flat_b) > 0
        assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True)), which


def test_an_error_on_one_rank_ends_every_rank_and_the_run_resumes(tmp_path):
    """Rank 1 alone fails at its 3rd step (as on an unreadable image): it reports the error with
    its rank and exits, the launcher ends rank 0, and a relaunch resumes from the last checkpoint."""
    overrides = [*SYNTHETIC, f"paths.runs={tmp_path}"]
    crash = [str(HELPERS / "crash_run.py"), "step:13", "fail", "--rank", "1", "--"]
    failed = launch(2, overrides, script=crash)  # 10 steps per epoch: fails in epoch 2
    assert failed.returncode != 0
    assert "error: rank 1: planted failure" in failed.stderr
    last = RunPaths(layout.run_dir(tmp_path, "synthetic", "small_cnn", "swa", 0)).last
    assert load_checkpoint(last)["epoch"] == 1
    resumed = launch(2, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "at epoch 2 from" in resumed.stdout


def check_swa_bn_refresh(run: Path) -> None:
    """The checkpointed SWA BN statistics = a single-process refresh of the checkpointed average
    over the run's last BN-refresh stream."""
    from omegaconf import OmegaConf

    from swa_repro.bn_refresh import refresh_bn
    from swa_repro.data import Normalizer, TrainStream, load_data
    from swa_repro.models import build_model

    cfg = OmegaConf.load(RunPaths(run).config)
    state = load_checkpoint(RunPaths(run).last)
    average = {k.removeprefix("module."): v for k, v in swa_of(state).items() if k != "n_averaged"}
    model = build_model(cfg.model.name, cfg.data.num_classes)
    model.load_state_dict(average)
    data = load_data(cfg.data)
    normalize = Normalizer(cfg.model.mean, cfg.model.std, torch.device("cpu"))
    stream = TrainStream(data.train_x, data.train_y, cfg.optim.batch_size, normalize, cfg.seed)
    refresh_bn(model, stream.inputs("bn_refresh", cfg.epochs - 1))
    refreshed = [k for k in average if k.endswith(("running_mean", "running_var"))]
    assert len(refreshed) == 14
    for key in refreshed:
        torch.testing.assert_close(model.state_dict()[key], average[key], rtol=1e-5, atol=1e-6)


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_slurm_tasks_under_submitit_form_one_process_group(tmp_path):
    """Two SLURM tasks of one submitit job (as hydra/launcher=slurm with tasks_per_node=2 starts
    them, environment only): they export SLURM's ranks to torch.distributed and join one group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "check.json"
    tasks = []
    for rank in (0, 1):
        env = dict(
            ENV, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4242", SLURM_NTASKS="2",
            SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
            SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), MASTER_PORT=str(port),
        )  # fmt: skip
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
            env.pop(key, None)
        command = [sys.executable, str(HELPERS / "dist_check.py"), str(out)]
        tasks.append(
            subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        )
    for task in tasks:
        _, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["agree_values"] == ["chosen on rank 0"] * 2
    assert r["bn_ranks"][0] == r["bn_ranks"][1]
