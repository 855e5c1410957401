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

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from peft_cli.core.compose import compose_dict
from peft_cli.core.console import console as make_console
from peft_cli.core.errors import Interrupted, UserError
from peft_cli.data.glue import read_task
from peft_cli.methods import shared_resource
from peft_cli.models import check_model
from peft_cli.run.identity import run_tag
from peft_cli.sweep.grid import Run, expand, sweep_config, with_status
from peft_cli.sweep.launchers import Launcher, make_launcher
from peft_cli.sweep.stages import Staged, Waiting, stage

if TYPE_CHECKING:
    from rich.console import Console


def run_sweep(
    overrides: list[str],
    dry_run: bool = False,
    retry_failed: bool = False,
    overwrite: bool = False,
    estimate: bool = False,
) -> int:
    """`peftx sweep OVERRIDES`; returns the number of runs left failed or unfinished. `overwrite`:
    replace completed runs of another config that sit in this grid's folders (else UserError).
    A two-stage sweep runs its search stage, then (locally, in the same command) the final runs of
    every group whose search stage completed. `estimate` (with `dry_run`): also time a few steps here
    and print the pending runs' cost."""
    if estimate and not dry_run:
        raise UserError("--estimate goes with --dry-run: peftx sweep --dry-run --estimate sweep=NAME")
    console = make_console(stderr=True)
    root = compose_dict(list(overrides))
    sweep = sweep_config(root.get("sweep"))
    launcher = make_launcher(root.get("launcher") or {}, root["results"]["dir"], sweep.name)
    grid = expand(sweep, list(overrides))
    staged = _staged(grid, launcher, overwrite)
    todo = [r for r in staged.runs if r.status == "pending" or (retry_failed and r.status == "failed")]
    if dry_run:
        _list(sweep.name, staged.runs, todo, launcher, staged.waiting)
        if estimate:
            _estimate(todo, root.get("launcher") or {}, console)
        return 0
    attempted: set[Path] = set()
    outcomes: list = []
    while True:
        runs = staged.runs
        console.print(
            f"sweep [bold]{sweep.name}[/]{': final stage' if attempted else ''}: {len(runs)} runs; "
            f"{_counts(runs, staged.waiting)}; {len(todo)} to run ({launcher.name})"
        )
        if todo:
            preflight(todo, console)
            build_shared(todo, console)
        launched = launcher.launch(todo, len(runs) - len(todo), console)
        attempted |= {r.folder for r in todo}
        if launched.outcomes is None:  # handed to a scheduler: failed runs that were not resubmitted
            if staged.waiting:
                console.print(
                    f"{len(staged.waiting)} final-stage runs wait for the search stage: rerun this command then"
                )
            return sum(r.status == "failed" and r.folder not in attempted for r in runs)
        outcomes += launched.outcomes
        if launched.stopped_by is not None or not sweep.two_stage:
            break
        before = len(staged.waiting)
        staged = _staged([with_status(r) for r in grid], launcher, overwrite)
        todo = [r for r in staged.runs if r.folder not in attempted and r.status == "pending"]
        if not todo or len(staged.waiting) == before:
            break  # nothing newly selectable: the final stage ran, or still waits
    left = _summary(sweep.name, [with_status(r) for r in staged.runs], len(attempted), outcomes, console)
    if staged.waiting:
        console.print(f"{len(staged.waiting)} final-stage runs still wait for their search stage")
    if launched.stopped_by is not None:
        raise Interrupted(f"sweep {sweep.name} stopped by signal; rerun it to resume", launched.stopped_by)
    return left + len(staged.waiting)


def _staged(grid: list[Run], launcher: Launcher, overwrite: bool) -> Staged:
    """The grid's runs with the launcher's view of their status, final runs kept only for chosen
    settings (stages.py), and conflicts resolved."""
    known = launcher.status(grid)  # queued elsewhere, or ended badly where only the launcher can tell
    runs = [
        dataclasses.replace(r, status=known[r.folder].status, note=known[r.folder].note) if r.folder in known else r
        for r in grid
    ]
    staged = stage(runs)
    return Staged(_resolve_conflicts(staged.runs, overwrite), staged.waiting)


def _resolve_conflicts(runs: list[Run], overwrite: bool) -> list[Run]:
    """Runs whose folder holds a completed run of another config: an error, or (overwrite) pending
    runs that replace it."""
    conflicts = [r for r in runs if r.status == "conflict"]
    if conflicts and not overwrite:
        raise UserError(
            f"{len(conflicts)} run folder(s) of this sweep hold a completed run of another config, e.g. "
            f"{conflicts[0].folder} ({conflicts[0].note}); pass --overwrite to replace them, or give the "
            "sweep its own experiment= or results.dir="
        )
    return [
        dataclasses.replace(r, status="pending", overwrite=True, note="replaces " + r.note)
        if r.status == "conflict"
        else r
        for r in runs
    ]


def _counts(runs: list[Run], waiting: list[Waiting] = ()) -> str:
    n = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "pending", "running")}
    text = f"{n['completed']} completed, {n['failed']} failed, {n['pending']} pending"
    text += f", {n['running']} running elsewhere" if n["running"] else ""
    return text + (f", {len(waiting)} waiting for the search stage" if waiting else "")


# --------------------------------------------------------------------------------------------
# checks before anything starts


def preflight(todo: list[Run], console: "Console") -> None:
    """What every run will need, checked once here before any run starts or is submitted: the
    task's data is readable and the model (its tokenizer and config) loads. UserError otherwise."""
    seen = set()
    for run in todo:
        cfg = run.cfg
        data_key = (cfg.task.name, cfg.data.glue_dir, cfg.data.cache_dir)
        if data_key not in seen:
            seen.add(data_key)
            read_task(cfg.task, cfg.data)
        model_key = json.dumps(dataclasses.asdict(cfg.model), sort_keys=True)
        if model_key not in seen:
            seen.add(model_key)
            check_model(cfg.model)
    console.print(
        f"checked: data of {sum(isinstance(k, tuple) for k in seen)} task(s) and "
        f"{sum(isinstance(k, str) for k in seen)} model(s) load"
    )


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


def _list(name: str, runs: list[Run], todo: list[Run], launcher: Launcher, waiting: list[Waiting] = ()) -> None:
    """--dry-run: one line per run (status, task, run tag, seed, folder, why), then what would happen.
    Final-stage runs of groups still searching are listed as `waiting` (their folder is not known)."""
    will = {r.folder for r in todo}
    rows = []
    for r in runs:
        note = r.note
        if r.status == "failed" and r.folder in will:
            note = "retried (--retry-failed)" + (f": {note}" if note else "")
        rows.append((r.status, r.cfg.task.name, run_tag(r.cfg), str(r.cfg.seed), str(r.folder), note))
    for w in waiting:
        rows.append(("waiting", w.task, f"{w.method_tag}-<selected>", str(w.seed), "-", "final stage; " + w.note))
    header = ("status", "task", "run", "seed", "folder", "note")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
    print(
        f"sweep {name}: {len(runs) + len(waiting)} runs; {_counts(runs, waiting)}; "
        f"would run {len(todo)} with launcher={launcher.name}"
    )
    for line in launcher.plan(todo):
        print(line)


def _estimate(todo: list[Run], launcher: dict, console: "Console") -> None:
    """--estimate: time the pending runs' (model, method) pairs here and print hours per task and in total."""
    from peft_cli.core.runtime import device_name, resolve_device
    from peft_cli.sweep.estimate import estimate, render

    if not todo:
        print("estimate: nothing to run")
        return
    preflight(todo, console)
    console.print(f"estimate: timing {len({(r.cfg.model.name, run_tag(r.cfg)) for r in todo})} setting(s) here ...")
    e = estimate(todo)
    for line in render(e, device_name(resolve_device(todo[0].cfg.train)), int(launcher.get("workers") or 1)):
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
        f"sweep {name}: {len(runs)} runs; {started}, skipped {len(runs) - todo}; {_counts(runs)}"
        + ("; rerun with --retry-failed to retry failed runs" if failed else "")
        + ("; rerun the sweep to finish the others" if incomplete > failed else "")
    )
    return incomplete
