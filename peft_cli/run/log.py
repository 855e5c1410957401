"""What a run tells while it trains: log.jsonl (one JSON object per line), and progress on stderr
(a bar on a terminal, whole lines elsewhere)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class RunLog:
    """log.jsonl: losses every `train.log_every` steps, validations, resume and discard events.
    Appended across restarts of the same run; flushed after every line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class Progress:
    """What a training run shows on stderr while it trains. On a terminal, a rich bar (loss in its
    last column). Off a terminal (SLURM logs, a sweep's train.log, pipes) a bar would show up only
    at the end, or as carriage-return soup; instead one whole line per log line of the trainer
    (step, loss, examples/s, ETA) and one per validation. `enabled=False` shows nothing."""

    def __init__(self, enabled: bool, label: str, total: int, start: int) -> None:
        self.label, self.total = label, total
        self.plain = enabled and not sys.stderr.isatty()
        self.bar = _bar(enabled and not self.plain)
        self.task = self.bar.add_task(label, total=total, completed=start, info="")
        self.origin = (start, time.monotonic())  # ETA from the mean rate since this process started training

    def __enter__(self) -> "Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def step(self, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        self.bar.update(self.task, completed=step)

    def logged(self, step: int, loss: float, examples_per_s: float) -> None:
        """The trainer's log line at `step`: mean loss since the last one, training examples/s."""
        self.bar.update(self.task, info=f"loss {loss:.4f}")
        if self.plain:
            steps_per_s = (step - self.origin[0]) / max(time.monotonic() - self.origin[1], 1e-9)
            eta = (self.total - step) / steps_per_s if steps_per_s > 0 else 0.0  # validations included
            rate = f"{examples_per_s:.1f} examples/s"
            _say(f"{self.label}  step {step}/{self.total}  loss {loss:.4f}  {rate}  ETA {_hms(eta)}")

    def validation(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        if self.plain:
            scores = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            _say(f"{self.label}  validation after epoch {epoch} (step {step}/{self.total}): {scores}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _bar(enabled: bool):
    """A rich progress bar on stderr (disabled: a no-op with the same interface)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
