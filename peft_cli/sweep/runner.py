"""`peftx sweep`: the grid of sweep=NAME (grid.py), minus what is done, on a launcher.

    compose + validate every run (exit 2 before anything starts) -> skip completed runs (and failed
    ones unless --retry-failed) and those the launcher has in flight -> build each shared resource
    (PaFi's mask) once -> the launcher runs or submits the rest -> summary. Returns how many runs
    are failed (locally: or left unfinished by an interrupted sweep); the CLI exits 1 when that is
    not 0.

Idempotent: a run is done when its result.json says completed with the same config_hash; a
cancelled, killed or missing run is run again (it resumes from its checkpoint when it has one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.compose import compose_dict
from peft_cli.methods import shared_resource
from peft_cli.run.identity import method_tag
from peft_cli.sweep.grid import Run, expand, sweep_config, with_status
from peft_cli.sweep.launchers import Launcher, make_launcher

if TYPE_CHECKING:
    from rich.console import Console


def run_sweep(overrides: list[str], dry_run: bool = False, retry_failed: bool = False) -> int:
    """`peftx sweep OVERRIDES`; returns the number of runs left failed or unfinished."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    root = compose_dict(list(overrides))
    sweep = sweep_config(root.get("sweep"))
    launcher = make_launcher(root.get("launcher") or {}, root["results"]["dir"], sweep.name)
    runs = expand(sweep, list(overrides))
    todo = [r for r in runs if r.status == "pending" or (retry_failed and r.status == "failed")]
    in_flight = launcher.status(todo)
    todo = [r for r in todo if r.folder not in in_flight]
    if dry_run:
        _list(sweep.name, runs, todo, in_flight, launcher)
        return 0
    console.print(
        f"sweep [bold]{sweep.name}[/]: {len(runs)} runs; {_counts(runs, in_flight)}; "
        f"{len(todo)} to run ({launcher.name})"
    )
    if todo:
        build_shared(todo, console)
    launched = launcher.launch(todo, len(runs) - len(todo), console)
    if launched.outcomes is None:  # handed to a scheduler: failed runs that were not resubmitted
        submitting = {r.folder for r in todo}
        return sum(r.status == "failed" and r.folder not in submitting for r in runs)
    return _summary(sweep.name, [with_status(r) for r in runs], len(todo), launched.outcomes, console)


def _counts(runs: list[Run], in_flight: dict[Path, str]) -> str:
    n = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "pending")}
    text = f"{n['completed']} completed, {n['failed']} failed, {n['pending']} pending"
    return text + (f" ({len(in_flight)} of them in flight on the launcher)" if in_flight else "")


# --------------------------------------------------------------------------------------------
# shared resources


def build_shared(todo: list[Run], console: "Console") -> list[Path]:
    """Each distinct shared resource a pending run needs (PaFi's mask), built (or reused) once,
    here, before any run: concurrent runs then only read it."""
    paths = []
    seen = set()
    for run in todo:
        res = shared_resource(run.cfg)
        if res is None or res.key in seen:
            continue
        seen.add(res.key)
        console.print(f"{res.describe}: {'reusing' if res.path.is_file() else 'building'} {res.path}")
        paths.append(res.build())
    return paths


# --------------------------------------------------------------------------------------------
# output


def _list(name: str, runs: list[Run], todo: list[Run], in_flight: dict[Path, str], launcher: Launcher) -> None:
    """--dry-run: one line per run (status, task, method_tag, seed, folder, why), then what would happen."""
    will = {r.folder for r in todo}
    rows = []
    for r in runs:
        status = "queued" if r.folder in in_flight else r.status
        note = in_flight.get(r.folder, r.note)
        if r.status == "failed" and r.folder in will:
            note = "retried (--retry-failed)" + (f": {note}" if note else "")
        rows.append((status, r.cfg.task.name, method_tag(r.cfg), str(r.cfg.seed), str(r.folder), note))
    header = ("status", "task", "method", "seed", "folder", "note")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
    print(
        f"sweep {name}: {len(runs)} runs; {_counts(runs, in_flight)}; would run {len(todo)} with "
        f"launcher={launcher.name}"
    )
    for line in launcher.plan(todo):
        print(line)


def _summary(name: str, runs: list[Run], todo: int, outcomes: list, console: "Console") -> int:
    """A table of what ran now and of failed runs; returns how many runs of the grid are not completed
    (failed now or before, or left pending by an interrupted sweep)."""
    from rich.table import Table

    by_folder = {o.run.folder: o for o in outcomes}
    table = Table(title=f"sweep {name}", title_justify="left")
    for col in ("status", "run", "result", "time"):
        table.add_column(col)
    for r in runs:
        o = by_folder.get(r.folder)
        if o is None and r.status != "failed":
            continue  # skipped completed, or never started (interrupted sweep): counted below
        colour = {"completed": "green", "failed": "red"}.get(o.status if o else r.status, "yellow")
        status = o.status if o else "failed (skipped)"
        detail = (o.detail if o else r.note)[:100]
        table.add_row(f"[{colour}]{status}[/]", r.label, detail, f"{o.seconds:.0f}s" if o else "")
    if table.row_count:
        console.print(table)
    failed = sum(r.status == "failed" for r in runs)
    incomplete = sum(r.status != "completed" for r in runs)  # failed, or cancelled/never started
    started = f"ran {len(outcomes)} now" + (f" ({todo - len(outcomes)} not started)" if todo > len(outcomes) else "")
    console.print(
        f"sweep {name}: {len(runs)} runs; {started}, skipped {len(runs) - todo}; {_counts(runs, {})}"
        + ("; rerun with --retry-failed to retry failed runs" if failed else "")
        + ("; rerun the sweep to finish the others" if incomplete > failed else "")
    )
    return incomplete
