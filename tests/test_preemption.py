"""Stop signals: recorded, and handed over to the handlers that were there before (submitit's)."""

from __future__ import annotations

import os
import signal

from swa_repro.preemption import StopRequest


def test_user_signal_is_recorded_and_handed_over_after_the_checkpoint():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop and stop.signum == signal.SIGUSR2
            assert calls == []  # nothing handed over before the checkpoint
            stop.handover()
            assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_bypassed_by_a_previous_handler_does_not_stop_the_run():
    """submitit ignores SIGTERM on purpose (its user signal requeues): SIGTERM must not stop us then."""
    bypassed, requeued = [], []
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: bypassed.append(signum))
    old_usr2 = signal.signal(signal.SIGUSR2, lambda signum, frame: requeued.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert not stop and bypassed == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGUSR2)  # the requeue signal that follows
            assert stop
            stop.handover()
            assert requeued == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGUSR2, old_usr2)


def test_plain_sigterm_stops_the_run_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signum == signal.SIGTERM
        stop.handover()  # the default handler is not a function: nothing to hand over
    assert signal.getsignal(signal.SIGTERM) == before
