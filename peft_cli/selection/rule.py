"""The selection rule, as pure functions over result.json dicts.

A *group* is one (model, method_tag, split protocol, task): a table cell. Its runs may hold several
*settings* (a run's `setting`: the train.*/data.* keys it sets beyond its experiment, e.g. a
learning rate from a grid). Within a group:

1. Selection seeds: the seeds that every setting of the group has (a two-stage sweep: the search
   seeds, as only the chosen setting has the final ones). A group whose settings share no seed is
   compared over each setting's own seeds.
2. Each setting's validation score: the median over its selection seeds of the task's headline
   metric on the *validation* split (NaN, e.g. a Pearson of constant predictions, counts as the
   worst score). Test metrics are never read here.
3. The best score wins. Ties (equal medians) go to the higher mean over the same seeds, then to the
   setting whose values sort first (numbers numerically, keys alphabetically: the smaller learning
   rate), so the choice never depends on the order the results were read in.
4. Reported seeds: the chosen setting's seeds beyond the selection seeds when it has any (the final
   seeds), otherwise all of its seeds. A selection seed's test score is not reported next to final
   ones: that run helped pick the setting.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Group = tuple[str, str, str, str]  # model, method_tag, protocol, task


@dataclass(frozen=True)
class Choice:
    """The outcome of selection in one group."""

    setting: dict[str, Any]  # the chosen setting ({} when the group has no grid)
    selection_seeds: tuple[int, ...]  # the seeds compared (sorted)
    reported_seeds: tuple[int, ...]  # the chosen setting's seeds its cells report (sorted)
    validation: dict[str, float]  # canon(setting) -> median validation headline over the selection seeds
    compared: bool  # False: the group has one setting, nothing was compared


def canon(setting: Mapping[str, Any]) -> str:
    """A setting as a canonical string (its identity within a group)."""
    return json.dumps(dict(setting), sort_keys=True)


def group_of(result: Mapping[str, Any]) -> Group:
    """The cell a result belongs to."""
    return (result["model"], result["method_tag"], result.get("protocol", "unknown"), result["task"])


def setting_of(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result's setting; results written before settings were recorded have none."""
    return dict(result.get("setting") or {})


def validation_score(result: Mapping[str, Any], headline: str) -> float:
    """The headline metric on the validation split, NaN when missing. Reads nothing else."""
    value = result.get("metrics", {}).get("validation", {}).get(headline)
    return float("nan") if value is None else float(value)


def _order(setting: Mapping[str, Any]) -> tuple:
    """Sort key of a setting for the last tie-break: numbers numerically, other values as JSON."""

    def one(v: Any) -> tuple:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return (0, float(v), "") if number else (1, 0.0, json.dumps(v, sort_keys=True))

    return tuple((k, *one(setting[k])) for k in sorted(setting))


def _finite(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def choose(results: list[Mapping[str, Any]], headline: str) -> Choice:
    """Select among the results of one group (see the module's rule)."""
    by_setting: dict[str, dict[int, float]] = {}
    settings: dict[str, dict[str, Any]] = {}
    for r in results:
        key = canon(setting_of(r))
        settings[key] = setting_of(r)
        by_setting.setdefault(key, {})[int(r["seed"])] = validation_score(r, headline)
    if not by_setting:
        raise ValueError("choose() needs at least one result")
    common = set.intersection(*(set(s) for s in by_setting.values()))

    def seeds_of(key: str) -> list[int]:
        return sorted(common) if common else sorted(by_setting[key])

    scores, means = {}, {}
    for key, vals in by_setting.items():
        xs = [_finite(vals[s]) for s in seeds_of(key)]
        scores[key] = statistics.median(xs)
        means[key] = -math.inf if -math.inf in xs else statistics.fmean(xs)
    best = min(by_setting, key=lambda k: (-scores[k], -means[k], _order(settings[k])))
    own = sorted(by_setting[best])
    beyond = [s for s in own if s not in common]
    return Choice(
        setting=settings[best],
        selection_seeds=tuple(seeds_of(best)),
        reported_seeds=tuple(beyond or own),
        validation={k: scores[k] for k in sorted(scores)},
        compared=len(by_setting) > 1,
    )


def select(results: list[Mapping[str, Any]], headlines: Mapping[str, str]) -> dict[Group, Choice]:
    """One Choice per group of `results`; `headlines` maps a task to its headline metric."""
    groups: dict[Group, list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(group_of(r), []).append(r)
    return {g: choose(rs, headlines[g[3]]) for g, rs in sorted(groups.items())}
