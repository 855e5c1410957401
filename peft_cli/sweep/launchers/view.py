"""The live view of a local sweep: one bar for the whole sweep (done / running / failed / skipped /
left, elapsed, ETA) and one line per running run (its latest step and loss from log.jsonl).
On a terminal it redraws in place; in a log file only the per-run lines printed on completion show."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from peft_cli.sweep.grid import Run


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def last_step(log: Path) -> str:
    """'step 120 · loss 0.4132' from the end of a run's log.jsonl ('' before its first line)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the first, cut line of the window, or a line being written
        if "loss" in rec:
            return f"step {rec['step']} · loss {rec['loss']:.4f}"
        if rec.get("event"):
            return f"{rec['event']} at step {rec.get('step', 0)}"
    return ""


class SweepView:
    """Counts and clock of a sweep; `with SweepView(...) as view:` shows it live."""

    def __init__(self, name: str, pending: int, skipped: int, workers: int, console: "Console") -> None:
        self.name, self.total, self.skipped, self.workers = name, pending, skipped, workers
        self.console = console
        self.started = time.time()
        self.running: dict[Path, tuple["Run", float]] = {}  # folder -> (run, start time)
        self.durations: list[float] = []
        self.done = self.failed = self.other = 0  # other: cancelled, or skipped (trained elsewhere)
        self._live = None

    def __enter__(self) -> "SweepView":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def start(self, run: "Run") -> None:
        self.running[run.folder] = (run, time.time())

    def finish(self, run: "Run", status: str, detail: str) -> float:
        """Record a finished run, print its line; returns its duration in seconds."""
        _, t0 = self.running.pop(run.folder)
        seconds = time.time() - t0
        self.durations.append(seconds)
        if status == "completed":
            self.done += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.other += 1
        colour = {"completed": "green", "failed": "red"}.get(status, "yellow")
        n = self.done + self.failed + self.other
        self.console.print(
            f"[{n}/{self.total}] [{colour}]{status:9}[/] {run.label}  {detail}  ({_clock(seconds)})", highlight=False
        )
        return seconds

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.other - len(self.running)

    def eta(self) -> float | None:
        """Mean run time so far x the work left, spread over the workers."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.time()
        remaining = sum(max(0.0, mean - (now - t0)) for _, t0 in self.running.values()) + self.left * mean
        return remaining / max(1, min(self.workers, self.left + len(self.running)))

    def summary_line(self) -> str:
        eta = self.eta()
        return (
            f"done {self.done} · running {len(self.running)} · failed {self.failed} · "
            + (f"stopped {self.other} · " if self.other else "")
            + f"skipped {self.skipped} · "
            f"left {self.left} · elapsed {_clock(time.time() - self.started)} · "
            f"ETA {_clock(eta) if eta is not None else '?'}"
        )

    def __rich__(self) -> "RenderableType":
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        head = Table.grid(padding=(0, 1))
        head.add_row(
            f"[bold]sweep {self.name}[/]",
            ProgressBar(total=max(1, self.total), completed=self.done + self.failed + self.other, width=30),
            f"{self.done + self.failed + self.other}/{self.total}",
            self.summary_line(),
        )
        rows = Table.grid(padding=(0, 2))
        now = time.time()
        for run, t0 in self.running.values():
            rows.add_row(f"  ▸ {run.label}", _clock(now - t0), last_step(run.folder / "log.jsonl"))
        return Group(head, rows)
