"""Turn SLURM's warning signals into "checkpoint at the next step, then exit".

SLURM sends SIGTERM before killing a job, and a configurable user signal ahead of a
time limit or preemption (submitit uses SIGUSR2 by default, many scripts SIGUSR1).
The handler only records the signal; the training loop checkpoints at its next step
and then calls `handover`, which passes the signal on to the handler that was there
before (submitit's requeue handler, when running under the submitit launcher).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was written; relaunch to resume


class StopRequest:
    """Context manager that records stop signals instead of dying on them.

    Under submitit, SIGTERM has a handler of its own that deliberately ignores it (the user
    signal carries the requeue), so a SIGTERM whose previous handler is a Python function is
    passed straight to it and does not stop the run.
    """

    def __init__(self):
        self.signals: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return bool(self.signals)

    @property
    def signum(self) -> int | None:
        return self.signals[0] if self.signals else None

    def _record(self, signum, frame) -> None:
        previous = self._previous.get(signum)
        if signum == signal.SIGTERM and callable(previous):
            previous(signum, frame)
        elif signum not in self.signals:
            self.signals.append(signum)

    def handover(self) -> None:
        """Give each recorded signal to the handler installed before ours, if it was a function
        (submitit's requeue handler for its user signal)."""
        for signum in self.signals:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, None)
