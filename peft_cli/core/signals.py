"""Signals that ask a run (or a sweep) to stop: SLURM's USR1 warning before a time limit, TERM
(preemption, scancel, a sweep stopping its children) and INT (Ctrl-C). They set a flag that the
loop reads between steps, never mid-step, so a checkpoint always holds a whole step. A second
Ctrl-C does not wait: it raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopFlag(threading.Event):
    """Set when a stop signal arrived; `signum` is the first one."""

    signum: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.is_set() and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if not self.is_set():
            self.signum = signum
        self.set()


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGUSR1/SIGTERM/SIGINT set the yielded flag instead of ending the process.
    Outside the main thread (where handlers cannot be installed) the flag is never set."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ignore_stop_signals() -> None:
    """Ignore SIGUSR1/SIGTERM in this process from now on (stop_on_signals still catches them
    inside its block). SIGINT keeps its default: Ctrl-C outside a run still interrupts."""
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
