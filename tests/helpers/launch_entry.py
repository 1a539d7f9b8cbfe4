"""What a process of tests/helpers/launch.py runs: imported once by the forkserver (so each
launch starts with torch, swa_repro and crash_run imported), then `child` in each fork."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch._dynamo  # noqa: F401  (imported by the first optimiser otherwise: ~2 s)

import swa_repro.train
from helpers import crash_run
from swa_repro.compose import check_overrides

# What every launch would do first, done once here: Hydra's plugin discovery and config parsing.
check_overrides(["experiment=synthetic/small_cnn_swa"])

CRASH_RUN = Path(crash_run.__file__).resolve()


def child(args: list[str], cwd: str, env: dict[str, str], logs: str) -> None:
    """Become `python ARGS` run in `cwd` with `env`, stdout and stderr into logs/."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        file = os.open(os.path.join(logs, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    if "OMP_NUM_THREADS" in env:  # as the command would read it at its start
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if args[:2] == ["-m", "swa_repro.train"]:
        sys.argv = [swa_repro.train.__file__, *args[2:]]
        swa_repro.train.cli()
    elif Path(args[0]).resolve() == CRASH_RUN:
        sys.argv = [str(CRASH_RUN), *args[1:]]
        crash_run.main()
    else:
        raise SystemExit(f"launch: cannot run {args[:2]}")
