"""Shared test set-up: the tiny run the training tests start from, runs trained once per session
and shared by the pytest-xdist workers, entry points called in-process, image folders.

Why in-process and shared: every `python -m ...` pays ~3 s of imports (torch, Hydra, dynamo)
before it does anything, and on 2 cores the suite's time is mostly that and repeated training.
What is about processes (exit codes of real launches, signals, SIGKILL, torchrun) still runs
real processes (tests/helpers/launch.py forks them from a process that has the imports done).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

# --- the tiny run -------------------------------------------------------------------------------

# 256 synthetic training images in 4 steps of 64 an epoch, 128 test images, no progress bars;
# the SWAG model average at a run's end from 2 posterior samples, not 30.
TINY_DATA = [
    "data.train_size=256",
    "data.test_size=128",
    "optim.batch_size=64",
    "progress=false",
    "swag.samples=2",
]
# An SWA run of 3 epochs evaluated after each, averaging from epoch 2, read at budget 2 (and at
# 1.5 budgets = epoch 3).
TINY_SWA = [*TINY_DATA, "eval_every=1", "epochs=3", "budget=2", "method.swa_start=2"]


def override_key(override: str) -> str:
    """The config key an override sets: `+a.b=1` and `a.b=2` both set a.b."""
    return override.split("=", 1)[0].lstrip("+~")


def tiny(*extra: str, base: list[str] = TINY_SWA) -> list[str]:
    """The tiny run's overrides (`base`), with `extra` ones replacing those of the same key."""
    replaced = {override_key(o) for o in extra}
    return [o for o in base if override_key(o) not in replaced] + list(extra)


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs use one thread, like OMP_NUM_THREADS=1 of the CLI runs: on a small loaded
    machine extra threads only slow them down (results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- results computed once per session ----------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session sees (the plain session's own
    temporary folder when not distributed)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


def computed_once(shared: Path, name: str, compute: Callable[[Path], None]) -> Path:
    """shared/name, filled by compute(folder) in the first worker that asks; the others wait on
    a file lock and reuse it. A computation that failed is redone by the next one to ask."""
    folder = shared / name
    with FileLock(str(folder) + ".lock"):
        done = folder / ".complete"
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            compute(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def trained_run(shared_dir) -> Callable[..., Path]:
    """trained_run(overrides, name): the directory of a finished in-process run of these
    overrides, trained once per session (name: a folder name unique to these overrides)."""
    from swa_repro.compose import compose_config
    from swa_repro.train import train

    def train_into(folder: Path, overrides: list[str]) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                train(compose_config(overrides), folder / "run")
        finally:
            torch.set_num_threads(before)
        (folder / "overrides.json").write_text(json.dumps(overrides))

    def trained(overrides: list[str], name: str) -> Path:
        folder = computed_once(shared_dir, name, lambda f: train_into(f, overrides))
        saved = json.loads((folder / "overrides.json").read_text())
        assert saved == overrides, f"two different runs were given the name {name}"
        return folder / "run"

    return trained


# Tests of tens of seconds, run first so that the pytest-xdist workers end together; the tests
# that read the shared sweep run last, so that no worker waits while another makes it.
FIRST = (
    "test_sweep.py::test_sweep_runs_all_and_aggregates",
    "test_figures.py::test_figures_demo_end_to_end_and_idempotent",
    "test_distributed.py::test_a_preempted_distributed_run_resumes_exactly",
)


def pytest_collection_modifyitems(items):
    """The order above (stable otherwise: the same on every worker, as xdist requires)."""

    def rank(item) -> int:
        if item.nodeid.endswith(FIRST):
            return 0
        return 2 if "sweep" in getattr(item, "fixturenames", ()) else 1

    items.sort(key=rank)


def pytest_sessionfinish(session):
    """Stop the server of tests/helpers/launch.py, if a test started it."""
    launch = sys.modules.get("helpers.launch")
    if launch is not None:
        launch.stop_server()


# --- entry points in-process --------------------------------------------------------------------


def run_main(
    main: Callable[[], object], argv: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`main()` as its command would run it (`python -m ... ARGV`), in this process: sys.argv set,
    stdout and stderr captured, the exit code of SystemExit (a message: printed, exit 1) or of
    an uncaught exception (traceback on stderr, exit 1)."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, code = sys.argv, os.getcwd(), 0
    sys.argv = command = [getattr(main, "__module__", "main"), *argv]
    try:
        os.chdir(cwd or saved_cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                if isinstance(exc.code, int) or exc.code is None:
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


# --- image folders ------------------------------------------------------------------------------


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
