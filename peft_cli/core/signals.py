"""Signals that ask a run (or a sweep) to stop: SLURM's USR1 warning before a time limit, and
TERM (preemption, scancel, a sweep stopping its children). They set a flag that the loop reads
between steps, never mid-step, so a checkpoint always holds a whole step."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Within the block, SIGUSR1/SIGTERM set the yielded Event instead of ending the process.
    Outside the main thread (where handlers cannot be installed) the Event is never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ignore_stop_signals() -> None:
    """Ignore SIGUSR1/SIGTERM in this process from now on (stop_on_signals still catches them
    inside its block)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
