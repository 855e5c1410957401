"""A sweep's grid: `conf/sweep/NAME.yaml` -> one validated run config per cell, with its status.

    name: quickstart
    experiment: quickstart          # conf/experiment/<name>.yaml: model, data and train settings
    tasks: [rte, {task: sst2, overrides: [data.max_train_examples=2000]}]
    methods:                        # one entry per table row; ablations are entries of their own
      - full
      - {method: pafi, overrides: [mask.strategy=random], grid: {train.lr: [3e-3, 1e-2]}}
    seeds: [1, 2, 3]                # or two stages: {search: [0], final: [1, 2, 3]} (sweep/stages.py)
    grid: {}                        # sweep-wide grid, e.g. {train.weight_decay: [0.0, 0.01]}
    overrides: []                   # shared by every run

A grid is a mapping from a config key to a list of values; a cell (task x method entry) runs every
point of the product of the sweep-wide grid and its method's grid (the method's list replaces the
sweep's for a key both name). Each point is a run of its own: a `train.*`/`data.*` key becomes part
of its setting, so of its folder name (run/identity.py).

A run's overrides, later ones winning: the sweep's `overrides`, `experiment= task= method= seed=`,
the task entry's, the sweep-wide grid point, the method entry's overrides, its grid point, then the
user's command line (minus `sweep`/`launcher` keys). Every run is composed (and so validated)
before anything starts.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
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


Grid = dict[str, list[Any]]  # config key -> values


@dataclass
class MethodEntry:
    method: str
    overrides: list[str] = field(default_factory=list)
    grid: Grid = field(default_factory=dict)


@dataclass
class Stages:
    """`seeds: {search: [0], final: [1, 2, 3]}`: search seeds run every grid point; final seeds only
    the point selected on the search seeds' validation scores (selection/rule.py)."""

    search: list[int]
    final: list[int]


@dataclass
class SweepConfig:
    name: str
    experiment: str
    tasks: list[TaskEntry]
    methods: list[MethodEntry]
    seeds: list[int] | Stages
    overrides: list[str] = field(default_factory=list)
    grid: Grid = field(default_factory=dict)

    @property
    def two_stage(self) -> bool:
        return isinstance(self.seeds, Stages)

    @property
    def search_seeds(self) -> list[int]:
        """Seeds that run every grid point (a one-stage sweep: all of them)."""
        return self.seeds.search if isinstance(self.seeds, Stages) else self.seeds

    @property
    def all_seeds(self) -> list[int]:
        """Search seeds, then final seeds not among them."""
        final = self.seeds.final if isinstance(self.seeds, Stages) else []
        return list(dict.fromkeys([*self.search_seeds, *final]))


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
    seeds = data.pop("seeds", None)
    cfg = from_dict(SweepConfig, {**data, "seeds": []}, "sweep")
    if isinstance(seeds, dict):
        cfg.seeds = from_dict(Stages, seeds, "sweep.seeds")
    elif isinstance(seeds, list):
        cfg.seeds = from_dict(_Seeds, {"seeds": seeds}, "sweep").seeds
    else:
        raise UserError(
            f"config key 'sweep.seeds' is {seeds!r}; give a list, e.g. [1, 2, 3], or two stages, "
            "e.g. {search: [0], final: [1, 2, 3]}"
        )
    for key, value in (("tasks", cfg.tasks), ("methods", cfg.methods), *_seed_lists(cfg)):
        if not value:
            raise UserError(f"config key 'sweep.{key}' is empty; the sweep '{cfg.name}' needs at least one")
    for where, grid in (
        ("sweep.grid", cfg.grid),
        *((f"sweep.methods[{i}].grid", m.grid) for i, m in enumerate(cfg.methods)),
    ):
        for key, values in grid.items():
            if not values:
                raise UserError(f"config key '{where}.{key}' is an empty list; give at least one value")
    return cfg


@dataclass
class _Seeds:
    seeds: list[int]


def _seed_lists(cfg: SweepConfig) -> list[tuple[str, list[int]]]:
    if isinstance(cfg.seeds, Stages):
        return [("seeds.search", cfg.seeds.search), ("seeds.final", cfg.seeds.final)]
    return [("seeds", cfg.seeds)]


def grid_points(sweep: SweepConfig, method: MethodEntry) -> list[list[str]]:
    """The override lists of the method entry's grid points (`[[]]` without a grid): the product of
    the sweep-wide grid and the method's, in the order the keys are written."""
    grid = {**sweep.grid, **method.grid}
    return [
        [f"{key}={hydra_value(v)}" for key, v in zip(grid, values, strict=True)]
        for values in itertools.product(*grid.values())
    ]


def hydra_value(v: Any) -> str:
    """A YAML value as the right-hand side of a Hydra override (floats exactly, by repr)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, str):
        return v
    raise UserError(f"a sweep grid value must be a number, a string, a bool, null or a list, got {v!r}")


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


def run_overrides(
    sweep: SweepConfig, task: TaskEntry, method: MethodEntry, seed: int, user: list[str], point: Sequence[str] = ()
) -> list[str]:
    """The override list of one run (`point`: its grid point's overrides); also what its `peftx
    train` line in a SLURM manifest gets."""
    own = [f"experiment={sweep.experiment}", f"task={task.task}", f"method={method.method}", f"seed={seed}"]
    shared = [o for o in point if override_key(o) in sweep.grid and override_key(o) not in method.grid]
    mine = [o for o in point if override_key(o) in method.grid]
    return merge_overrides(sweep.overrides, own, task.overrides, shared, method.overrides, mine, per_run(user))


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
    stage: str = ""  # two-stage sweeps: "search" (every grid point) or "final" (the selected point only)

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
    composed and validated; a two-stage sweep's final seeds included for every grid point (the
    stages module keeps the selected ones). Raises UserError naming the run if any config is bad."""
    seeds = sweep.all_seeds
    cells = [
        (ti, mi, pi)
        for ti in range(len(sweep.tasks))
        for mi, method in enumerate(sweep.methods)
        for pi in range(len(grid_points(sweep, method)))
    ]
    composed: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for ti, mi, pi in cells:
        for si, d in enumerate(_compose_seeds(sweep, seeds, ti, mi, pi, user)):
            composed[(si, ti, mi, pi)] = d
    runs: dict[Path, Run] = {}
    for key in sorted(composed):
        si, ti, mi, pi = key
        task, method, seed = sweep.tasks[ti], sweep.methods[mi], seeds[si]
        overrides = run_overrides(sweep, task, method, seed, user, grid_points(sweep, method)[pi])
        cfg, folder = _validated(composed[key], sweep, overrides)
        chash = config_hash(cfg)
        if folder in runs:
            if config_hash(runs[folder].cfg) == chash:
                continue  # the same run twice (e.g. a user override of `seed` or of a grid key): run it once
            raise UserError(
                f"sweep '{sweep.name}': runs [{' '.join(runs[folder].overrides)}] and [{' '.join(overrides)}] "
                f"differ but share the folder {folder}; grid over keys that name the folder (train.*, data.*, "
                "the method's tag), make the method_tag tell them apart, or split the sweep"
            )
        stage = "" if not sweep.two_stage else "search" if seed in sweep.search_seeds else "final"
        runs[folder] = Run(overrides, cfg, folder, *status_of(folder, chash), stage=stage)
    return list(runs.values())


def _compose_seeds(
    sweep: SweepConfig, seeds: list[int], ti: int, mi: int, pi: int, user: list[str]
) -> list[dict[str, Any]]:
    """One composed dict per seed of the cell's grid point. Composing costs ~0.2 s; when the first
    two seeds give dicts that differ only in `seed` (nothing interpolates it), the rest are copies."""
    task, method = sweep.tasks[ti], sweep.methods[mi]
    point = grid_points(sweep, method)[pi]

    def one(seed: int) -> dict[str, Any]:
        try:
            return compose_run(run_overrides(sweep, task, method, seed, user, point))
        except UserError as e:
            where = " ".join([f"task={task.task}", f"method={method.method}", *point, f"seed={seed}"])
            raise UserError(f"sweep '{sweep.name}', run {where}: {e}") from None

    first = one(seeds[0])
    if len(seeds) == 1:
        return [first]
    second = one(seeds[1])
    if {**first, "seed": seeds[1]} != second:
        return [first, second] + [one(s) for s in seeds[2:]]
    return [first, second] + [{**first, "seed": s} for s in seeds[2:]]


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
