"""Run `python -m swa_repro.train` with a trigger planted at a precise point of the run.

    python tests/helpers/crash_run.py POINT:N ACTION [--marker FILE] [--rank R] -- <hydra overrides>

POINT (the N-th occurrence, 1-based, counted over this process):
    step     a training step: the N-th call of F.cross_entropy with grad enabled
             (evaluation calls run under no_grad and are not counted); fires before the loss
    bn       the N-th BN refresh of the SWA model (an AveragedModel: not an EMA's or a posterior
             sample's), after its first batch went through
    sample   the N-th posterior sample of the SWAG model average at the end of the run (Swag.draw),
             before it is drawn
    write    the N-th checkpoint file write (swa_repro.checkpoint.save_checkpoint): fires after
             half of the payload reached the temporary file, before the digest and the rename
    rename   the N-th `os.replace(next.pt, last.pt)` in RunFiles.save_rolling: fires after
             last.pt -> last.prev.pt, before next.pt -> last.pt
ACTION:
    kill     os.kill(own pid, SIGKILL): the process dies on the spot
    TERM, USR1, USR2
             send that signal to itself and carry on (the run checkpoints and exits 75)
    wait     touch --marker FILE, then block until a stop signal sent from outside has been
             recorded by the run's StopRequest, and carry on
    hold     as wait, then touch FILE.held and block until a second signal ends the process
             (a second Ctrl-C: KeyboardInterrupt), without reaching the next checkpoint
    fail     raise a DataError ("planted failure"), as an unreadable image would
--rank R: under torchrun, fire in the process of rank R only (default: every process)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

import swa_repro.checkpoint
import swa_repro.data
import swa_repro.evaluator
import swa_repro.loop
import swa_repro.run_files
import swa_repro.swag
import swa_repro.train

WAIT_LIMIT_S = 60.0


def parse(argv: list[str]) -> tuple[str, int, str, Path | None, str | None, list[str]]:
    split = argv.index("--")
    head, overrides = argv[:split], argv[split + 1 :]
    point, n = head[0].split(":")
    action = head[1]
    marker = Path(head[head.index("--marker") + 1]) if "--marker" in head else None
    rank = head[head.index("--rank") + 1] if "--rank" in head else None
    if point not in ("step", "bn", "sample", "write", "rename"):
        raise SystemExit(f"crash_run: unknown point {point!r}")
    if action not in ("kill", "TERM", "USR1", "USR2", "wait", "hold", "fail"):
        raise SystemExit(f"crash_run: unknown action {action!r}")
    if action in ("wait", "hold") and marker is None:
        raise SystemExit(f"crash_run: {action} needs --marker FILE")
    return point, int(n), action, marker, rank, overrides


def main() -> None:
    point, target, action, marker, rank, overrides = parse(sys.argv[1:])
    if rank is not None and os.environ.get("RANK", "0") != rank:
        target = -1  # another rank's trigger: never fires here
    stops: list = []

    class RecordingStopRequest(swa_repro.loop.StopRequest):
        def __enter__(self):
            stops.append(self)
            return super().__enter__()

    swa_repro.loop.StopRequest = RecordingStopRequest

    def fire() -> None:
        if action == "fail":
            raise swa_repro.data.DataError("planted failure")
        if action == "kill":
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(WAIT_LIMIT_S)  # never reached: SIGKILL cannot be caught
        elif action in ("wait", "hold"):
            marker.touch()
            deadline = time.monotonic() + WAIT_LIMIT_S
            while not (stops and stops[-1]):
                if time.monotonic() > deadline:
                    raise SystemExit("crash_run: no stop signal arrived")
                time.sleep(0.01)
            if action == "hold":
                marker.with_name(marker.name + ".held").touch()
                time.sleep(WAIT_LIMIT_S)  # a second Ctrl-C raises KeyboardInterrupt in here
                raise SystemExit("crash_run: no second signal arrived")
        else:
            os.kill(os.getpid(), getattr(signal, "SIG" + action))

    count = 0

    def hit() -> bool:
        nonlocal count
        count += 1
        return count == target

    if point == "step":
        real_ce = F.cross_entropy

        def cross_entropy(*args, **kwargs):
            if torch.is_grad_enabled() and hit():
                fire()
            return real_ce(*args, **kwargs)

        F.cross_entropy = cross_entropy

    elif point == "bn":
        real_refresh = swa_repro.evaluator.refresh_bn

        def refresh_bn(model, batches, *rest):
            if not isinstance(model, AveragedModel) or not hit():
                return real_refresh(model, batches, *rest)

            def interrupted():
                for i, batch in enumerate(batches):
                    if i == 1:
                        fire()
                    yield batch

            return real_refresh(model, interrupted(), *rest)

        swa_repro.evaluator.refresh_bn = refresh_bn

    elif point == "sample":
        real_draw = swa_repro.swag.Swag.draw

        def draw(self, *args, **kwargs):
            if hit():
                fire()
            return real_draw(self, *args, **kwargs)

        swa_repro.swag.Swag.draw = draw

    elif point == "write":

        class HalfWriter:
            """A file whose first write stops halfway (the data is on disk) and fires."""

            def __init__(self, f):
                self.f = f

            def __enter__(self):
                self.f.__enter__()
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def write(self, data):
                half = len(data) // 2
                self.f.write(data[:half])
                self.f.flush()
                os.fsync(self.f.fileno())
                fire()
                return half + self.f.write(data[half:])

            def __getattr__(self, name):
                return getattr(self.f, name)

        def checkpoint_open(file, mode="r", *args, **kwargs):
            f = open(file, mode, *args, **kwargs)
            is_checkpoint = ".pt.tmp" in os.path.basename(file)  # not metrics/config/npz writes
            return HalfWriter(f) if "w" in mode and is_checkpoint and hit() else f

        swa_repro.checkpoint.open = checkpoint_open

    elif point == "rename":

        class OsProxy:
            """swa_repro.run_files' view of `os`, with a trap in replace."""

            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst, *args, **kwargs):
                if Path(src).name == "next.pt" and hit():
                    fire()
                return os.replace(src, dst, *args, **kwargs)

        swa_repro.run_files.os = OsProxy()

    sys.argv = [sys.argv[0], *overrides]
    swa_repro.train.main()


if __name__ == "__main__":
    main()
