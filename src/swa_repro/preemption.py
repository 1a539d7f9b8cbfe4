"""Turn stop signals into "checkpoint at the next step, then exit".

SLURM sends SIGTERM before killing a job, and a configurable user signal ahead of a
time limit or preemption (submitit uses SIGUSR2 by default, many scripts SIGUSR1); Ctrl-C
sends SIGINT. The handler only records the signal; the training loop checkpoints at its next
step and then calls `handover`, which passes the signal on to the handler that was there
before (submitit's requeue handler, when running under the submitit launcher). The run then
exits with 75 (EX_TEMPFAIL: relaunch to resume), or 130 after Ctrl-C (the shell's code for
SIGINT). A second Ctrl-C does not wait for the checkpoint: it raises KeyboardInterrupt at once
(the last complete checkpoint stays valid: every write is atomic).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was written; relaunch to resume
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), after the checkpoint


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
        elif signum == signal.SIGINT and signum in self.signals:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        elif signum not in self.signals:
            self.signals.append(signum)

    def handover(self) -> None:
        """Give each recorded signal to the handler installed before ours, if it was a function
        (submitit's requeue handler for its user signal)."""
        for signum in self.signals:
            previous = self._previous.get(signum)
            if callable(previous) and previous is not signal.default_int_handler:
                previous(signum, None)
