"""Two-stage sweeps (`seeds: {search: [0], final: [1, 2, 3]}`): the search seeds run every grid
point; once every search run of a (model, method_tag, protocol, task) group has completed, the
final seeds run only the point that selection on validation chose (selection/rule.py, the same rule
the report applies, so the table reports the runs the sweep made). Until then the group's final
runs are *waiting*: `--dry-run` lists them so, and a later `peftx sweep` starts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from peft_cli.run.identity import method_tag
from peft_cli.run.record import read_result
from peft_cli.selection.rule import Group, canon, choose, group_of
from peft_cli.sweep.grid import Run


@dataclass(frozen=True)
class Waiting:
    """A final-stage run whose setting is not chosen yet."""

    task: str
    method_tag: str
    seed: int
    note: str  # why it waits


class Staged(NamedTuple):
    runs: list[Run]  # one-stage runs, search runs and the final runs of chosen settings, in grid order
    waiting: list[Waiting]  # final runs of groups whose search stage is not complete


def run_group(run: Run) -> Group:
    """The selection group of a run, from its config (as group_of reads it from its result.json)."""
    cfg = run.cfg
    return group_of(
        {"model": cfg.model.name, "method_tag": method_tag(cfg), "protocol": cfg.data.protocol, "task": cfg.task.name}
    )


def stage(runs: list[Run]) -> Staged:
    """Keep the final runs of settings chosen on completed search stages; list the others as waiting."""
    if not any(r.stage == "final" for r in runs):
        return Staged(runs, [])
    search: dict[Group, list[Run]] = {}
    for r in runs:
        if r.stage != "final":
            search.setdefault(run_group(r), []).append(r)
    chosen: dict[Group, str] = {}
    why: dict[Group, str] = {}
    for g, rs in search.items():
        done = [r for r in rs if r.status == "completed"]
        results = [read_result(r.folder / "result.json") for r in done]
        if len(done) < len(rs) or any(x is None for x in results):
            failed = sum(r.status == "failed" for r in rs)
            why[g] = f"waits for its search stage: {len(done)} of {len(rs)} runs completed" + (
                f", {failed} failed (--retry-failed)" if failed else ""
            )
            continue
        chosen[g] = canon(choose(results, rs[0].cfg.task.headline).setting)
    kept, waiting = [], {}
    for r in runs:
        g = run_group(r)
        if r.stage != "final":
            kept.append(r)
        elif g in chosen:
            if canon(r.cfg.setting) == chosen[g]:
                kept.append(r)
        else:
            note = why.get(g, "no search run in this group")
            waiting.setdefault((g, r.cfg.seed), Waiting(r.cfg.task.name, g[1], r.cfg.seed, note))
    return Staged(kept, list(waiting.values()))
