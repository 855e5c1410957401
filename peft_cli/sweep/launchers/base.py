"""The launcher protocol: what `peftx sweep` asks of every launcher.

launcher = make_launcher(raw, results_dir, sweep)   # settings from conf/launcher/NAME.yaml
launcher.status(runs)   -> {run folder: Status}     what only the launcher knows: runs in flight
                                                      ("running": not started again) and runs that
                                                      ended badly under it ("failed", with why)
launcher.plan(todo)     -> [line, ...]              --dry-run: what launch() would do
launcher.launch(todo, skipped, console) -> Launched  run or submit the pending runs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

if TYPE_CHECKING:
    from rich.console import Console

    from peft_cli.sweep.grid import Run, Status


@dataclass
class Outcome:
    """How one run ended in this sweep invocation (launchers that wait for their runs)."""

    run: "Run"
    status: str  # completed | failed | cancelled
    seconds: float
    detail: str  # "score 71.48" or the error


class Launched(NamedTuple):
    """What `launch` did: the runs' outcomes when it waited for them (local), or None when it
    handed them to a scheduler that runs them later (SLURM)."""

    outcomes: list[Outcome] | None
    stopped_by: int | None = None  # the signal that stopped the sweep early (SIGINT: Ctrl-C), if any


class Launcher(Protocol):
    name: ClassVar[str]
    settings_cls: ClassVar[type]  # dataclass of conf/launcher/NAME.yaml

    def __init__(self, settings: Any, results_dir: str, sweep: str) -> None: ...

    def status(self, runs: list["Run"]) -> dict[Path, "Status"]:
        """Runs whose status the launcher knows better than their folders do: in flight ("running",
        e.g. "queued as job 12_3") or ended without saying so ("failed", e.g. "SLURM OUT_OF_MEMORY")."""
        ...

    def plan(self, todo: list["Run"]) -> list[str]:
        """Lines for --dry-run that say what `launch(todo)` would do (the run list is printed apart)."""
        ...

    def launch(self, todo: list["Run"], skipped: int, console: "Console") -> Launched:
        """Run or submit `todo` (all pending); `skipped` runs of the grid need nothing."""
        ...
