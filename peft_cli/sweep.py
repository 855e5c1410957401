"""`peftx sweep`: the grid of sweep=NAME (grid.py), minus what is done, on a launcher.

    compose + validate every run (exit 2 before anything starts) -> skip completed runs (and failed
    ones unless --retry-failed) -> build each model's shared mask once -> launcher=local runs them
    here, launcher=slurm submits one job array -> summary. Returns how many runs are failed (locally:
    or left unfinished by an interrupted sweep); the CLI exits 1 when that is not 0.

Idempotent: a run is done when its result.json says completed with the same config_hash; a
cancelled, killed or missing run is run again (it resumes from its checkpoint when it has one).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_cli.config import compose_dict
from peft_cli.errors import UserError
from peft_cli.grid import Run, expand, sweep_config, with_status

if TYPE_CHECKING:
    from rich.console import Console


def run_sweep(overrides: list[str], dry_run: bool = False, retry_failed: bool = False) -> int:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    root = compose_dict(list(overrides))
    sweep = sweep_config(root.get("sweep"))
    launcher = _launcher(root.get("launcher") or {})
    runs = expand(sweep, list(overrides))
    todo = [r for r in runs if r.status == "pending" or (retry_failed and r.status == "failed")]
    queued: dict[Path, str] = {}
    if launcher.name == "slurm":
        from peft_cli.launchers import slurm

        queued = slurm.queued(root["results"]["dir"], sweep.name, launcher)
        todo = [r for r in todo if r.folder not in queued]
    if dry_run:
        _list(sweep.name, runs, todo, queued, root, launcher)
        return 0
    console.print(f"sweep [bold]{sweep.name}[/]: {len(runs)} runs; {_counts(runs, queued)}; "
                  f"{len(todo)} to run ({launcher.name})")
    if todo:
        build_masks(todo, console)
    if launcher.name == "slurm":
        return _submit(sweep.name, runs, todo, root, launcher, console)
    from peft_cli.launchers.local import run_local

    skipped = len(runs) - len(todo)
    outcomes = run_local(sweep.name, todo, skipped, launcher, console) if todo else []
    return _summary(sweep.name, [with_status(r) for r in runs], len(todo), outcomes, console)


def _launcher(raw: dict[str, Any]):
    name = raw.get("name")
    if name == "local":
        from peft_cli.launchers.local import settings
    elif name == "slurm":
        from peft_cli.launchers.slurm import settings
    else:
        raise UserError(f"config key 'launcher.name' is {name!r}; use launcher=local or launcher=slurm")
    return settings(raw)


def _counts(runs: list[Run], queued: dict[Path, str]) -> str:
    n = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "pending")}
    text = f"{n['completed']} completed, {n['failed']} failed, {n['pending']} pending"
    return text + (f" ({len(queued)} of them queued on SLURM)" if queued else "")


# --------------------------------------------------------------------------------------------
# shared masks


def build_masks(todo: list[Run], console: "Console") -> list[Path]:
    """Each distinct (model, mask config, results dir) that a pending run needs, built (or reused) once,
    here, before any run: concurrent runs then only read it."""
    from peft_cli.shared_mask import build_for_config, mask_path, needs_shared_mask

    paths = []
    seen = set()
    for run in todo:
        cfg = run.cfg
        if not needs_shared_mask(cfg):
            continue
        key = json.dumps([asdict(cfg.model), asdict(cfg.mask), cfg.results.dir], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        path = mask_path(Path(cfg.results.dir), cfg.model.name, cfg.mask)
        console.print(f"shared mask for {cfg.model.name} ({cfg.mask.strategy}, density {cfg.mask.density:g}): "
                      f"{'reusing' if path.is_file() else 'building'} {path}")
        paths.append(build_for_config(cfg, show=False))
    return paths


# --------------------------------------------------------------------------------------------
# output


def _list(name: str, runs: list[Run], todo: list[Run], queued: dict[Path, str], root: dict, launcher) -> None:
    """--dry-run: one line per run (status, task, method_tag, seed, folder, why), then what would happen."""
    from peft_cli.methods import method_tag

    will = {r.folder for r in todo}
    rows = []
    for r in runs:
        status = "queued" if r.folder in queued else r.status
        note = f"job {queued[r.folder]}" if r.folder in queued else r.note
        if r.status == "failed" and r.folder in will:
            note = "retried (--retry-failed)" + (f": {note}" if note else "")
        rows.append((status, r.cfg.task.name, method_tag(r.cfg.method, r.cfg.mask), str(r.cfg.seed), str(r.folder), note))
    header = ("status", "task", "method", "seed", "folder", "note")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
    print(f"sweep {name}: {len(runs)} runs; {_counts(runs, queued)}; would run {len(todo)} with launcher={launcher.name}")
    if launcher.name == "slurm" and todo:
        from peft_cli.launchers import slurm

        _, cmd = slurm.submit(name, todo, root["results"]["dir"], launcher, dry_run=True)
        print("would submit: " + " ".join(cmd))


def _submit(name: str, runs: list[Run], todo: list[Run], root: dict, launcher, console: "Console") -> int:
    from peft_cli.launchers import slurm

    submitting = {r.folder for r in todo}
    failed = sum(r.status == "failed" and r.folder not in submitting for r in runs)
    if not todo:
        console.print(f"nothing to submit: {_counts(runs, {})}")
        return failed
    job, cmd = slurm.submit(name, todo, root["results"]["dir"], launcher)
    logs = slurm.slurm_dir(root["results"]["dir"], name)
    console.print(f"submitted job array {job} ({len(todo)} tasks): {' '.join(cmd)}")
    console.print(f"logs: {logs}/{job}_<task>.out|err   watch: squeue -j {job}   afterwards: peftx sweep "
                  f"sweep={name} --dry-run")
    print(job)  # stdout: the job id alone, for scripts
    return failed


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
    console.print(f"sweep {name}: {len(runs)} runs; {started}, skipped {len(runs) - todo}; {_counts(runs, {})}"
                  + ("; rerun with --retry-failed to retry failed runs" if failed else "")
                  + ("; rerun the sweep to finish the others" if incomplete > failed else ""))
    return incomplete
