"""Launch `python -m swa_repro.train ...` or `python tests/helpers/crash_run.py ...` as real,
separate processes, forked from a server process that has imported torch and swa_repro once
(multiprocessing's forkserver): the same exit codes, signals, stdout/stderr and files as the
command, without its ~3 s of imports per launch.

    proc = start(["-m", "swa_repro.train", *overrides], cwd, env)   # Popen-like
    result = run(["crash_run.py", "step:6", "kill", "--", *overrides], cwd, env)

Each launch is a fresh process running the entry point's own code (train.cli, crash_run.main)
with sys.argv, the environment and the working directory of the command; only the interpreter
start and the imports are shared. SIGKILL, stop signals and Ctrl-C reach it as they would the
command (the forkserver restores the default SIGINT handler in its children).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.platform == "win32":  # pragma: no cover
    raise ImportError("tests/helpers/launch.py needs fork (POSIX)")

PRELOAD = ["helpers.launch_entry"]  # what the server imports once (torch, swa_repro, crash_run)


TESTS = str(Path(__file__).resolve().parents[1])


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    _start_server()
    return context


def _start_server() -> None:
    """Start the server (once) with tests/ importable: multiprocessing silently skips a preload
    module the server cannot import, and every launch would then import torch itself."""
    from multiprocessing import forkserver

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, saved]))
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def stop_server() -> None:
    """Stop the server and wait for it (tests/conftest.py, at the session's end), so that the CPU
    time of its launches is counted as that of subprocesses is (`time make test` tells the
    truth), and no server outlives the tests."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # CPython's own, for its tests
    if stop is not None:
        stop()


class Launched:
    """A started launch, with the parts of subprocess.Popen the tests use."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.args = args
        self._logs = Path(tempfile.mkdtemp(prefix="launch-"))
        from helpers.launch_entry import child

        self._process = _context().Process(
            target=child, args=(args, str(cwd), env, str(self._logs)), daemon=False
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def result(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Wait (killing it after `timeout` seconds), then the exit code and what it printed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            out, err = ((self._logs / name).read_text() for name in ("stdout", "stderr"))
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        finally:
            shutil.rmtree(self._logs, ignore_errors=True)
        return subprocess.CompletedProcess(self.args, self.returncode, out, err)


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Launched:
    """Launch `python ARGS` (ARGS: -m swa_repro.train ... or a path to crash_run.py ...)."""
    return Launched(list(map(str, args)), Path(cwd), dict(os.environ if env is None else env))


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Launch and wait: subprocess.run(..., capture_output=True, text=True) of `python ARGS`."""
    return start(args, cwd, env).result(timeout)
