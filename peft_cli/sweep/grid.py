"""A sweep's grid: `conf/sweep/NAME.yaml` -> one validated run config per cell, with its status.

    name: quickstart
    experiment: quickstart          # conf/experiment/<name>.yaml: model, data and train settings
    tasks: [rte, {task: sst2, overrides: [data.max_train_examples=2000]}]
    methods:                        # one entry per table row; ablations are entries of their own
      - full
      - {method: pafi, overrides: [mask.strategy=random]}
    seeds: [1, 2, 3]
    overrides: []                   # shared by every run

A run's overrides, later ones winning: the sweep's `overrides`, `experiment= task= method= seed=`,
the task entry's, the method entry's, then the user's command line (minus `sweep`/`launcher` keys).
Every run is composed (and so validated) before anything starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from peft_cli.core.compose import compose_run
from peft_cli.core.config import RunConfig, from_dict, run_config
from peft_cli.core.errors import UserError
from peft_cli.run import checkpoint, lock
from peft_cli.run.identity import config_hash, run_folder, run_tag
from peft_cli.run.record import read_result


@dataclass
class TaskEntry:
    task: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class MethodEntry:
    method: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class SweepConfig:
    name: str
    experiment: str
    tasks: list[TaskEntry]
    methods: list[MethodEntry]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)


def sweep_config(raw: Any) -> SweepConfig:
    """The composed `sweep` node -> SweepConfig. A bare name stands for an entry without overrides."""
    if raw is None:
        raise UserError("no sweep selected; pass sweep=NAME (a file in conf/sweep/, e.g. sweep=quickstart)")
    if not isinstance(raw, dict):
        raise UserError(f"config 'sweep' must be a mapping, got {raw!r}")
    data = dict(raw)
    for key, entry_key in (("tasks", "task"), ("methods", "method")):
        if isinstance(data.get(key), list):
            data[key] = [{entry_key: e} if isinstance(e, str) else e for e in data[key]]
    cfg = from_dict(SweepConfig, data, "sweep")
    for key in ("tasks", "methods", "seeds"):
        if not getattr(cfg, key):
            raise UserError(f"config key 'sweep.{key}' is empty; the sweep '{cfg.name}' needs at least one")
    return cfg


# --------------------------------------------------------------------------------------------
# overrides


def override_key(override: str) -> str:
    """`+train.lr=1e-3` -> `train.lr`; the key an override sets (or deletes, `~key`)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate, keeping only the last override of each key (Hydra rejects some repeats, e.g.
    two `+key=` or two group choices, and a later value must win)."""
    flat = [o for g in groups for o in g]
    last = {override_key(o): i for i, o in enumerate(flat)}
    return [o for i, o in enumerate(flat) if last[override_key(o)] == i]


def run_overrides(sweep: SweepConfig, task: TaskEntry, method: MethodEntry, seed: int, user: list[str]) -> list[str]:
    """The override list of one cell; also what its `peftx train` line in a SLURM manifest gets."""
    own = [f"experiment={sweep.experiment}", f"task={task.task}", f"method={method.method}", f"seed={seed}"]
    return merge_overrides(sweep.overrides, own, task.overrides, method.overrides, per_run(user))


def per_run(user: list[str]) -> list[str]:
    """The user's overrides that reach every run: all but those that pick the sweep or launcher."""
    return [o for o in user if override_key(o).split(".")[0] not in ("sweep", "launcher")]


# --------------------------------------------------------------------------------------------
# runs


@dataclass
class Run:
    overrides: list[str]
    cfg: RunConfig
    folder: Path
    status: str  # see Status
    note: str = ""  # why pending: "new", "resumes at step 40", "config changed", ...
    overwrite: bool = False  # train it with --overwrite (replaces a completed run of another config)

    @property
    def label(self) -> str:
        return f"{self.cfg.task.name} {run_tag(self.cfg)} seed {self.cfg.seed}"


class Status(NamedTuple):
    # completed | failed | pending | running (a live process holds the folder's lock) |
    # conflict (the folder holds a completed run of another config)
    status: str
    note: str  # why pending ("new", "cancelled, resumes at step 40", ...), who runs it, or a failed run's error


def status_of(folder: Path, chash: str) -> Status:
    """A run's status from its folder's lock, result.json and checkpoint. A result of another config
    (its config_hash differs from `chash`) that did not complete is stale: that run is pending again."""
    h = lock.holder(folder)
    if h is not None and lock.alive(h):
        return Status("running", f"being trained by {lock.describe(h)}")
    r = read_result(folder / "result.json")
    if r is None:
        return Status("pending", "new" if not (folder / "result.json").exists() else "unreadable result.json")
    if r["config_hash"] != chash:
        if r["status"] == "completed":
            return Status("conflict", f"holds a completed run of another config ({r['config_hash']})")
        return Status("pending", f"config changed (was {r['config_hash']})")
    if r["status"] in ("completed", "failed"):
        return Status(r["status"], r.get("error", "") if r["status"] == "failed" else "")
    step = checkpoint.saved_step(folder, chash)
    return Status(
        "pending", f"{r['status']}, resumes at step {step}" if step is not None else f"{r['status']}, restarts"
    )


def expand(sweep: SweepConfig, user: list[str]) -> list[Run]:
    """Every run of the grid, seed-major (a partial sweep covers all cells with one seed first),
    composed and validated. Raises UserError naming the cell if any run's config is bad."""
    composed: dict[tuple[int, int, int], dict[str, Any]] = {}
    for ti, task in enumerate(sweep.tasks):
        for mi, method in enumerate(sweep.methods):
            for si, d in enumerate(_compose_seeds(sweep, task, method, user)):
                composed[(si, ti, mi)] = d
    runs: dict[Path, Run] = {}
    for key in sorted(composed):
        si, ti, mi = key
        task, method, seed = sweep.tasks[ti], sweep.methods[mi], sweep.seeds[si]
        overrides = run_overrides(sweep, task, method, seed, user)
        cfg, folder = _validated(composed[key], sweep, overrides)
        chash = config_hash(cfg)
        if folder in runs:
            if config_hash(runs[folder].cfg) == chash:
                continue  # the same run twice (e.g. a user override of `seed`): run it once
            raise UserError(
                f"sweep '{sweep.name}': runs [{' '.join(runs[folder].overrides)}] and [{' '.join(overrides)}] "
                f"differ but share the folder {folder}; make the method_tag tell them apart or split the sweep"
            )
        runs[folder] = Run(overrides, cfg, folder, *status_of(folder, chash))
    return list(runs.values())


def _compose_seeds(sweep: SweepConfig, task: TaskEntry, method: MethodEntry, user: list[str]) -> list[dict[str, Any]]:
    """One composed dict per seed of the cell. Composing costs ~0.2 s; when the first two seeds give
    dicts that differ only in `seed` (nothing interpolates it), the rest are copies."""

    def one(seed: int) -> dict[str, Any]:
        try:
            return compose_run(run_overrides(sweep, task, method, seed, user))
        except UserError as e:
            raise UserError(
                f"sweep '{sweep.name}', run task={task.task} method={method.method} seed={seed}: {e}"
            ) from None

    first = one(sweep.seeds[0])
    if len(sweep.seeds) == 1:
        return [first]
    second = one(sweep.seeds[1])
    if {**first, "seed": sweep.seeds[1]} != second:
        return [first, second] + [one(s) for s in sweep.seeds[2:]]
    return [first, second] + [{**first, "seed": s} for s in sweep.seeds[2:]]


def _validated(d: dict[str, Any], sweep: SweepConfig, overrides: list[str]) -> tuple[RunConfig, Path]:
    """(config, run folder); building the folder's method_tag also validates the method's own keys."""
    try:
        cfg = run_config(d)
        return cfg, run_folder(cfg)
    except UserError as e:
        raise UserError(f"sweep '{sweep.name}', run [{' '.join(overrides)}]: {e}") from None


def with_status(run: Run) -> Run:
    """The run with its status read again (e.g. after a launcher ran it)."""
    return dataclasses.replace(run, **status_of(run.folder, config_hash(run.cfg))._asdict())
