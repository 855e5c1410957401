"""What a run tells while it trains: log.jsonl (one JSON object per line) and a progress bar."""

from __future__ import annotations

import json
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


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (disabled: a no-op with the same interface)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
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
