"""Reliability: kill/resume equivalence, stop signals, damaged and malicious checkpoints,
non-finite losses, config changes on resume.

Real processes and real signals: each run is `python -m swa_repro.train` (Hydra CLI), or
tests/helpers/crash_run.py, which runs the same `main` with a SIGKILL (or a stop signal)
planted at an exact point: a training step, the SWA BN refresh, the middle of a checkpoint
write, or between the two renames of RunFiles.save_rolling. After relaunching with the same
command until the run finishes, weights, averaged weights, optimiser state and metrics must be
bitwise those of one uninterrupted run. The processes are forked from one that has the imports
done (tests/helpers/launch.py), each a process of its own.

The run: 128 synthetic images, batch 32 (4 steps per epoch), 4 epochs, SWA from epoch 2 (BN
refreshes after epochs 2, 3, 4), budget 3 (epochs 3 and 4 kept). Checkpoint file writes, in
order: 1 last@1, 2 last@2, 3 epoch_0003, 4 last@3, 5 epoch_0004, 6 last@4 (a kept epoch is
written before the rolling checkpoint, so a crash between the two cannot lose it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

import swa_repro.loop
import swa_repro.train
from conftest import computed_once, run_main, swa_of, tiny
from helpers import launch
from swa_repro import demo, layout
from swa_repro.checkpoint import MAGIC, CheckpointError, load_checkpoint
from swa_repro.compose import compose_config
from swa_repro.config_check import ConfigError
from swa_repro.layout import RunPaths
from swa_repro.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED
from swa_repro.run_files import check_same_config

CRASH_RUN = Path(__file__).resolve().parent / "helpers" / "crash_run.py"
RUN_REL = Path(layout.run_name("synthetic", "small_cnn", "swa", 0))  # the `name` of these overrides
STEPS_PER_EPOCH = 4
EPOCHS = 4
TIMEOUT_S = 120


def base_overrides() -> list[str]:
    return tiny(
        "data.train_size=128",
        "data.test_size=64",
        f"epochs={EPOCHS}",
        "budget=3",
        "method.swa_start=2",
        "optim.batch_size=32",
        "eval_batch_size=64",
        "ema.decays=[0.999]",  # one EMA: its state resumes as the others would
    )


def overrides_for(runs: Path, *extra: str) -> list[str]:
    return [*base_overrides(), f"paths.runs={runs}", *extra]


def run_cli(
    runs: Path, *extra: str, driver: list[str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m swa_repro.train` with the base overrides (or crash_run.py DRIVER... -- overrides)."""
    return launch.run(command(runs, *extra, driver=driver), **proc_kwargs(runs), timeout=TIMEOUT_S)


def command(runs: Path, *extra: str, driver: list[str] | None = None) -> list[str]:
    head = ["-m", "swa_repro.train"] if driver is None else [str(CRASH_RUN), *driver, "--"]
    return head + overrides_for(runs, *extra)


def proc_kwargs(runs: Path) -> dict:
    runs.mkdir(parents=True, exist_ok=True)
    # One intra-op thread: on a small shared CPU box, 2 spinning OpenMP threads per run can slow
    # these tiny runs several-fold under load. Every run of a comparison uses the same setting.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return {"cwd": runs, "env": env}


def relaunch_until_finished(runs: Path, max_launches: int = 3) -> list[subprocess.CompletedProcess]:
    done = []
    for _ in range(max_launches):
        proc = run_cli(runs)
        done.append(proc)
        assert proc.returncode == 0, report(proc)
        if RunPaths(runs / RUN_REL).summary.is_file():
            return done
    raise AssertionError("run did not finish")


def report(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def ckpt(run_dir: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(RunPaths(run_dir).checkpoints / name)


def metrics_without_time(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in RunPaths(run_dir).metrics.read_text().splitlines()]
    for record in records:
        record.pop("time_s")
    return records


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """Nested dicts/lists/tensors equal, tensors by torch.equal (same dtype and shape too)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (
            f"tensor differs at {where}"
        )
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (
            f"keys differ at {where}: {sorted(a)} vs {sorted(b)}"
        )
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    got, want = ckpt(run_dir), ckpt(reference)
    assert got["epoch"] == want["epoch"] == EPOCHS and got["step"] == want["step"] == 0
    for key in ("model", "optimizer"):
        assert_bitwise_equal(got[key], want[key], key)
    assert_bitwise_equal(swa_of(got), swa_of(want), "swa")
    assert_bitwise_equal(got["collectors"], want["collectors"], "collectors")
    assert list(got["collectors"]) == ["swa", "swag", "ema_0.999"]
    assert metrics_without_time(run_dir) == metrics_without_time(reference)
    summary, ref_summary = (
        json.loads(RunPaths(d).summary.read_text()) for d in (run_dir, reference)
    )
    summary.pop("wall_time_s"), ref_summary.pop("wall_time_s")
    assert summary == ref_summary
    kept = sorted(p.name for p in RunPaths(run_dir).checkpoints.glob("epoch_*.pt"))
    assert kept == sorted(p.name for p in RunPaths(reference).checkpoints.glob("epoch_*.pt"))
    weights = sorted(p.name for p in (reference / "weights").iterdir())
    assert weights == sorted(p.name for p in (run_dir / "weights").iterdir()) and len(weights) == 4
    for name in weights:  # (the file's metadata order is not fixed: compare what it holds)
        got_file, want_file = (str(d / "weights" / name) for d in (run_dir, reference))
        assert_bitwise_equal(load_file(got_file), load_file(want_file), name)
        assert safe_open(got_file, "pt").metadata() == safe_open(want_file, "pt").metadata()
    for name in ("calibration.json", "posterior/last/posterior.json"):
        assert (run_dir / name).read_text() == (reference / name).read_text()


def copy_reference(reference: Path, runs: Path, finished: bool = False) -> Path:
    run_dir = runs / RUN_REL
    shutil.copytree(reference, run_dir)
    if not finished:
        RunPaths(run_dir).summary.unlink()  # as if killed just before the summary was written
    return run_dir


def file_state(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="session")
def reference(shared_dir) -> Path:
    """One uninterrupted run (seed 0); its directory (one for every pytest-xdist worker)."""

    def uninterrupted(runs: Path) -> None:
        proc = run_cli(runs)
        assert proc.returncode == 0, report(proc)

    run_dir = computed_once(shared_dir, "reliability_reference", uninterrupted) / RUN_REL
    assert ckpt(run_dir)["epoch"] == EPOCHS
    return run_dir


# --- 1, 5: SIGKILL at chosen moments, relaunch, bitwise equality --------------------------------


def check_killed_mid_epoch(run_dir: Path) -> None:
    assert ckpt(run_dir)["epoch"] == 1  # epoch 2 was in progress


def check_killed_in_bn_refresh(run_dir: Path) -> None:
    assert ckpt(run_dir)["epoch"] == 2  # epoch 3 trained, its BN refresh interrupted


def check_killed_in_model_average(run_dir: Path) -> None:
    """Training done (last.pt at epoch 4), SWAG-Diag's 2 samples averaged and saved."""
    assert ckpt(run_dir)["epoch"] == EPOCHS
    state = load_checkpoint(run_dir / "posterior" / "last" / "state.pt")
    assert (
        state["variants"]["swag_diag"]["test"]["samples"] == 2 and "swag" not in state["variants"]
    )


def check_killed_in_write(run_dir: Path) -> None:
    folder = RunPaths(run_dir).checkpoints
    # 5: the previous checkpoint is intact and loadable right after the crash
    state = load_checkpoint(folder / "last.pt")
    assert state["epoch"] == 2
    assert not (folder / "next.pt").exists()
    partial = list(folder.glob(".next.pt.tmp*"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the write really was half done


def check_killed_between_renames(run_dir: Path) -> None:
    folder = RunPaths(run_dir).checkpoints
    assert not (folder / "last.pt").exists()
    assert ckpt(run_dir, "last.prev.pt")["epoch"] == 1
    assert ckpt(run_dir, "next.pt")["epoch"] == 2


def check_killed_in_kept_write(run_dir: Path) -> None:
    folder = RunPaths(run_dir).checkpoints
    assert ckpt(run_dir)["epoch"] == 2  # the kept file comes first: epoch 3 is redone, then kept
    assert not (folder / "epoch_0003.pt").exists()
    assert len(list(folder.glob(".epoch_0003.pt.tmp*"))) == 1


KILL_CASES = [
    pytest.param("step:6", check_killed_mid_epoch, "at epoch 2", id="mid-epoch"),
    pytest.param("bn:2", check_killed_in_bn_refresh, "at epoch 3", id="bn-refresh"),
    pytest.param("sample:3", check_killed_in_model_average, "at epoch 5", id="model-average"),
    pytest.param("write:4", check_killed_in_write, "at epoch 3", id="checkpoint-write"),
    pytest.param("rename:2", check_killed_between_renames, "next.pt", id="between-renames"),
    pytest.param("write:3", check_killed_in_kept_write, "at epoch 3", id="kept-checkpoint-write"),
]


@pytest.mark.parametrize(("point", "check", "resumed_at"), KILL_CASES)
def test_sigkill_and_relaunch_is_bitwise_identical(tmp_path, reference, point, check, resumed_at):
    runs = tmp_path / "runs"
    killed = run_cli(runs, driver=[point, "kill"])
    assert killed.returncode == -signal.SIGKILL, report(killed)
    run_dir = runs / RUN_REL
    assert not RunPaths(run_dir).summary.exists()
    check(run_dir)

    launches = relaunch_until_finished(runs)
    assert "resuming" in launches[0].stdout and resumed_at in launches[0].stdout, report(
        launches[0]
    )
    assert_same_as_reference(run_dir, reference)


def test_repeated_sigkills_then_relaunch(tmp_path, reference):
    """Several crashes in a row: in epoch 1 (before any checkpoint), in the rename window of
    epoch 2, then (resumed from next.pt) in the BN refresh after epoch 4."""
    runs = tmp_path / "runs"
    for point in ("step:3", "rename:2", "bn:2"):  # counts are per process
        killed = run_cli(runs, driver=[point, "kill"])
        assert killed.returncode == -signal.SIGKILL, report(killed)
    assert ckpt(runs / RUN_REL)["epoch"] == 3
    relaunch_until_finished(runs)
    assert_same_as_reference(runs / RUN_REL, reference)


# --- 2: stop signals -> checkpoint, exit 75 (130 for Ctrl-C), relaunch ----------------------------

SIGNAL_CASES = [
    # sent from outside while the run waits at the start of epoch 2 step 2 -> mid-epoch checkpoint
    pytest.param(
        "step:6", "wait", signal.SIGTERM, (1, 2), "at epoch 2 step 2", EXIT_PREEMPTED,
        id="SIGTERM-mid-epoch",
    ),
    # sent from outside during the BN refresh after epoch 3 -> end-of-epoch checkpoint
    pytest.param(
        "bn:2", "wait", signal.SIGUSR1, (3, 0), "after epoch 3", EXIT_PREEMPTED,
        id="SIGUSR1-bn-refresh",
    ),
    # sent to itself on the last step of epoch 1 -> the epoch completes, then stops
    pytest.param(
        "step:4", "USR2", signal.SIGUSR2, (1, 0), "after epoch 1", EXIT_PREEMPTED,
        id="SIGUSR2-last-step",
    ),
    # Ctrl-C: the same checkpoints, then exit 130 (the shell's code for SIGINT)
    pytest.param(
        "step:6", "wait", signal.SIGINT, (1, 2), "at epoch 2 step 2", EXIT_INTERRUPTED,
        id="SIGINT-mid-epoch",
    ),
    pytest.param(
        "bn:2", "wait", signal.SIGINT, (3, 0), "after epoch 3", EXIT_INTERRUPTED,
        id="SIGINT-end-of-epoch",
    ),
]  # fmt: skip


def wait_for(marker: Path, proc: launch.Launched) -> None:
    """Until the run under crash_run.py touched `marker` (it waits there for a signal)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists():
        assert proc.poll() is None, "run ended before reaching the stop point"
        assert time.monotonic() < deadline, "run never reached the stop point"
        time.sleep(0.02)


def signalled_run(runs: Path, driver: list[str], *signals: tuple[Path, int]):
    """crash_run.py DRIVER, sending each (marker, signal) once the run has touched the marker;
    the finished process."""
    proc = launch.start(command(runs, driver=driver), **proc_kwargs(runs))
    try:
        for marker, sig in signals:
            wait_for(marker, proc)
            proc.send_signal(sig)
        return proc.result(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("point", "action", "sig", "saved_at", "message", "code"), SIGNAL_CASES)
def test_a_stop_signal_checkpoints_exits_75_or_130_and_resumes(
    tmp_path, reference, point, action, sig, saved_at, message, code
):
    runs = tmp_path / "runs"
    marker = tmp_path / "waiting"
    signals = [(marker, sig)] if action == "wait" else []
    stopped = signalled_run(runs, [point, action, "--marker", str(marker)], *signals)
    stderr = stopped.stderr
    assert stopped.returncode == code, report(stopped)
    assert f"stopped by signal {int(sig)} {message}" in stderr, report(stopped)
    assert "relaunch" in stderr
    assert len(stderr.strip().splitlines()) == 1, report(stopped)  # one line: how to resume
    run_dir = runs / RUN_REL
    state = ckpt(run_dir)
    assert (state["epoch"], state["step"]) == saved_at
    assert not RunPaths(run_dir).summary.exists()

    launches = relaunch_until_finished(runs)
    assert len(launches) == 1 and "resuming" in launches[0].stdout
    assert_same_as_reference(run_dir, reference)


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(tmp_path, reference):
    """Ctrl-C in epoch 2 asks for a checkpoint at the next step; a second one before it stops
    the run at once (KeyboardInterrupt): exit 130, one line naming the checkpoint to resume
    from, which is the intact one of epoch 1 (nothing half written): the relaunch resumes it
    bitwise."""
    runs = tmp_path / "runs"
    marker = tmp_path / "waiting"
    held = tmp_path / "waiting.held"  # crash_run touches it once the first Ctrl-C is recorded
    driver = ["step:6", "hold", "--marker", str(marker)]
    stopped = signalled_run(runs, driver, (marker, signal.SIGINT), (held, signal.SIGINT))
    run_dir = runs / RUN_REL
    folder = RunPaths(run_dir).checkpoints
    assert stopped.returncode == EXIT_INTERRUPTED, report(stopped)
    assert stopped.stderr.strip().splitlines() == [
        f"interrupted; relaunch the same command to resume from {folder / 'last.pt'}"
    ], report(stopped)
    state = ckpt(run_dir)
    assert (state["epoch"], state["step"]) == (1, 0)  # no checkpoint after the first Ctrl-C
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no partial file
    assert not RunPaths(run_dir).summary.exists()

    launches = relaunch_until_finished(runs)
    assert len(launches) == 1 and "resuming" in launches[0].stdout
    assert "at epoch 2" in launches[0].stdout, report(launches[0])
    assert_same_as_reference(run_dir, reference)


# --- 3: a finished run is left alone ------------------------------------------------------------


def test_finished_run_relaunch_does_nothing(tmp_path, reference):
    runs = tmp_path / "runs"
    run_dir = copy_reference(reference, runs, finished=True)
    before = file_state(run_dir)
    proc = run_cli(runs)
    assert proc.returncode == 0, report(proc)
    assert "already finished" in proc.stdout
    assert "ep " not in proc.stdout and "resuming" not in proc.stdout
    after = file_state(run_dir)
    for name in ("summary.json", "metrics.jsonl", "config.yaml"):
        assert after[name] == before[name]
    assert {k: v for k, v in after.items() if k.startswith("checkpoints")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints")
    }


# --- 4: damaged, malicious checkpoints ----------------------------------------------------------


def truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def flip_middle_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("damage", "what"),
    [(truncate, "truncated"), (flip_middle_byte, "checksum")],
    ids=["truncated", "bit-flip"],
)
def test_damaged_last_falls_back_to_previous(tmp_path, reference, damage, what):
    runs = tmp_path / "runs"
    run_dir = copy_reference(reference, runs)
    last = RunPaths(run_dir).last
    damage(last)
    damaged_bytes = last.read_bytes()
    assert damaged_bytes != RunPaths(reference).last.read_bytes()
    with pytest.raises(CheckpointError, match=what):
        load_checkpoint(last)

    proc = run_cli(runs)
    assert proc.returncode == 0, report(proc)
    warnings = [line for line in proc.stdout.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and str(last) in warnings[0], report(proc)
    assert "last.prev.pt" in proc.stdout  # resumed from the fallback
    corrupt = RunPaths(run_dir).checkpoints / "last.pt.corrupt"
    assert corrupt.read_bytes() == damaged_bytes  # kept aside, untouched
    assert sorted(p.name for p in RunPaths(run_dir).checkpoints.glob("*.corrupt*")) == [
        "last.pt.corrupt"
    ]
    assert_same_as_reference(run_dir, reference)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_checkpoint(path: Path, marker: Path, via: str) -> None:
    """A payload that runs `touch marker` when unpickled, with a valid digest and magic."""
    state = {"epoch": 1, "model": RunsCode(marker)}
    if via == "torch.save":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
    else:
        payload = pickle.dumps(state, protocol=2)
    path.write_bytes(payload + hashlib.sha256(payload).digest() + MAGIC)


@pytest.mark.parametrize("via", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused(tmp_path, via):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    write_malicious_checkpoint(evil, marker, via)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_malicious_checkpoint_via_cli(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    write_malicious_checkpoint(evil, marker, "torch.save")
    proc = run_cli(tmp_path / "runs", f"resume={evil}")
    assert proc.returncode == 2, report(proc)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "evil.pt" in errors[0], report(proc)
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_all_checkpoints_damaged_exits_2_and_deletes_nothing(tmp_path, reference):
    runs = tmp_path / "runs"
    run_dir = copy_reference(reference, runs)
    folder = RunPaths(run_dir).checkpoints
    names = sorted(p.name for p in folder.glob("*.pt"))
    assert {"last.pt", "last.prev.pt", "epoch_0003.pt", "epoch_0004.pt"} <= set(names)
    for name in names:
        flip_middle_byte(folder / name)
    damaged = {name: (folder / name).read_bytes() for name in names}
    others = {k: v for k, v in file_state(run_dir).items() if not k.startswith("checkpoints")}

    proc = run_cli(runs)
    assert proc.returncode == 2, report(proc)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "no loadable checkpoint" in errors[0], report(proc)
    assert "Traceback" not in proc.stderr
    for name, blob in damaged.items():  # every file still there, byte for byte, set aside
        assert (folder / f"{name}.corrupt").read_bytes() == blob
    assert not list(folder.glob("*.pt"))
    after = {k: v for k, v in file_state(run_dir).items() if not k.startswith("checkpoints")}
    assert {k: after.get(k) for k in others if not k.startswith(".hydra")} == {
        k: v for k, v in others.items() if not k.startswith(".hydra")
    }


# --- 6: non-finite loss -------------------------------------------------------------------------


def run_config(runs: Path, *extra: str):
    return compose_config(overrides_for(runs, *extra))


@pytest.mark.parametrize(
    ("check_every", "nan_from_step"),
    [(swa_repro.loop.LOSS_CHECK_EVERY, 2), (3, 2), (3, 4)],
    ids=["checked-at-epoch-end", "checked-mid-epoch", "second-check"],
)
def test_nan_loss_raises_naming_epoch_and_step(
    tmp_path, monkeypatch, one_thread, check_every, nan_from_step
):
    monkeypatch.setattr(swa_repro.loop, "LOSS_CHECK_EVERY", check_every)
    real_ce = F.cross_entropy
    steps = 0

    def cross_entropy(*args, **kwargs):
        nonlocal steps
        loss = real_ce(*args, **kwargs)
        if not torch.is_grad_enabled():  # evaluation
            return loss
        steps += 1
        return loss * math.nan if steps >= STEPS_PER_EPOCH + nan_from_step else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    cfg = run_config(tmp_path / "runs")
    run_dir = tmp_path / "run"
    with pytest.raises(swa_repro.loop.NonFiniteError, match=rf"epoch 2 step {nan_from_step}\b"):
        swa_repro.train.train(cfg, run_dir)
    state = ckpt(run_dir)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not RunPaths(run_dir).summary.exists()


def test_diverging_run_exits_3(tmp_path):
    proc = run_cli(tmp_path / "runs", "schedule=constant", "optim.lr_init=1e6")
    assert proc.returncode == 3, report(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), report(proc)
    assert re.search(r"epoch \d+ step \d+", lines[0]), report(proc)


# --- 7: resuming under a different config -------------------------------------------------------


def test_resume_with_different_config_is_refused(tmp_path, reference):
    runs = tmp_path / "runs"
    run_dir = copy_reference(reference, runs)
    before = file_state(run_dir)
    proc = run_cli(runs, "optim.lr_init=0.05")
    assert proc.returncode == 2, report(proc)
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "optim.lr_init" in errors[0], report(proc)
    after = file_state(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".hydra") and k != "train.log"} == {
        k: v for k, v in before.items() if not k.startswith(".hydra") and k != "train.log"
    }


def test_resume_ignores_where_the_data_lives_but_not_what_it_is():
    """Moving the data set (node-local scratch) or changing loader workers keeps a run resumable."""
    saved = compose_config(["experiment=imagenet/resnet50_swa"])
    moved = compose_config(
        [
            "experiment=imagenet/resnet50_swa",
            "data.root=/scratch/imagenet",
            "data.workers=2",
            "progress=false",
        ]
    )
    check_same_config(OmegaConf.to_yaml(saved, resolve=True), moved)
    cifar = compose_config(["experiment=cifar10/vgg16_sgd"])
    check_same_config(
        OmegaConf.to_yaml(cifar, resolve=True),
        compose_config(
            ["experiment=cifar10/vgg16_sgd", "data.root=/elsewhere", "data.download=false"]
        ),
    )
    other = compose_config(["experiment=imagenet/resnet50_swa", "data.image_size=160"])
    with pytest.raises(ConfigError, match=r"differs in: data\.image_size\)"):
        check_same_config(OmegaConf.to_yaml(saved, resolve=True), other)


def test_demo_reports_divergence_as_train_does(tmp_path):
    """The demo runs through train's outcome handling: one error line, exit 3, failed.json."""
    runs = tmp_path / "runs"
    argv = ["optim.lr_init=1e9", "data.train_size=128", "data.test_size=64", "progress=false",
            f"paths.runs={runs}"]  # fmt: skip
    proc = run_main(lambda: demo.main(sys.argv[1:]), argv)  # python -m swa_repro.demo ARGV
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: loss is nan"), proc.stderr[-2000:]
    failed = json.loads(
        RunPaths(layout.run_dir(runs, "synthetic", "small_cnn", "sgd", 0)).failed.read_text()
    )
    assert failed["exit_code"] == 3 and "loss is nan" in failed["error"]
    assert not (runs / "synthetic/small_cnn/swa").exists()  # the demo stopped at the failing run


def test_runs_saved_before_keys_were_added_still_resume():
    """A config.yaml without method.swa_include_start / model.bn_weight_init (saved before they
    existed) resumes when the current values mean what it ran with."""
    cfg = compose_config(["experiment=cifar100/wrn28x10_swa"])
    old = OmegaConf.to_container(cfg, resolve=True)
    del old["method"]["swa_include_start"], old["model"]["bn_weight_init"]
    check_same_config(OmegaConf.to_yaml(OmegaConf.create(old)), cfg)
    including = compose_config(
        ["experiment=cifar100/wrn28x10_swa", "method.swa_include_start=true"]
    )
    with pytest.raises(ConfigError, match=r"differs in: method\.swa_include_start\)"):
        check_same_config(OmegaConf.to_yaml(OmegaConf.create(old)), including)
