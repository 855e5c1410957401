"""Completed result.json files -> a report `Table` (table.py). The numbers, precisely:

- A cell is the median over seeds of one test metric, in percent (`statistics.median`: the middle
  value for odd n, the mean of the two middle values for even n). The CSV keeps n and the spread
  (sample std, or min and max). A cell with fewer seeds than the largest n in the table is marked †.
- Avg = the mean, over the table's tasks, of the row's per-task median of `score` (the task's
  headline metric). A row that lacks any of the table's tasks has no Avg ("—"); it is never an
  average over fewer tasks. Avg is marked † when one of its medians is.
- % trainable / % stored = median over the row's runs of params.trainable / params.backbone and
  params.stored / params.backbone, x100 (the task head is excluded from both). Size/task = median
  over the row's runs of `stored_bytes` (one task's artifact on disk, head included).
- Published reference rows (conf/reference/) sit under their own separator; their Avg follows the
  same definition over the table's tasks, and the source's own Avg is quoted in the footnote.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from peft_cli.core.compose import conf_dir
from peft_cli.core.config import ResultsConfig, TaskConfig, from_dict
from peft_cli.core.errors import UserError
from peft_cli.report.reference import Reference
from peft_cli.report.table import Cell, Column, Row, Table
from peft_cli.run.record import STATUSES, read_result

GLUE_ORDER = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")  # tasks not listed go last
SPREADS = ("std", "minmax")

# --------------------------------------------------------------------------------------------
# config


@dataclass
class ReportOptions:
    """The `report:` block of conf/config.yaml."""

    runs: str | None = None  # glob under results/runs; None = "<experiment>/*/*/*/*"
    spread: str = "std"  # std | minmax (the CSV's spread columns)
    references: list[str] = field(default_factory=list)  # conf/reference/NAME.yaml (or paths)


@dataclass
class ReportConfig:
    experiment: str
    results: ResultsConfig
    report: ReportOptions

    @property
    def pattern(self) -> str:
        return self.report.runs or f"{self.experiment}/*/*/*/*"

    @property
    def tables_dir(self) -> Path:
        return Path(self.results.dir) / "tables"


def report_config(cfg: dict[str, Any]) -> ReportConfig:
    """The composed plain dict (compose_dict) -> ReportConfig, strictly."""
    rc = from_dict(ReportConfig, {k: cfg.get(k, {}) for k in ("experiment", "results", "report")}, "")
    if rc.report.spread not in SPREADS:
        raise UserError(f"config key 'report.spread' is {rc.report.spread!r}; choose one of: {', '.join(SPREADS)}")
    if rc.report.runs is not None and (rc.report.runs.startswith("/") or ".." in Path(rc.report.runs).parts):
        raise UserError(
            f"config key 'report.runs' is {rc.report.runs!r}; give a glob under results/runs, e.g. cpu_minilm/*/*/rte/*"
        )
    return rc


# --------------------------------------------------------------------------------------------
# reading


def load_task(name: str) -> TaskConfig:
    """conf/task/NAME.yaml as a TaskConfig (UserError if a result names an unknown task)."""
    import yaml

    path = conf_dir() / "task" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"a result names task '{name}' but {path} does not exist; add it or narrow report.runs")
    return from_dict(TaskConfig, yaml.safe_load(path.read_text(encoding="utf-8")), "task")


class Collected(NamedTuple):
    runs: list[dict[str, Any]]  # completed results, each with "_dir" (its run folder)
    counts: dict[str, int]  # result.json files by status, "unreadable" included


def collect(results_dir: str | Path, pattern: str) -> Collected:
    """Completed results under runs/<pattern>, and how many result.json files were skipped, by
    status (a file that is unreadable, half-written or lacks keys counts as 'unreadable')."""
    # globbed here rather than through record.iter_results, which silently drops unreadable files
    counts = Counter({s: 0 for s in (*STATUSES, "unreadable")})
    done: list[dict[str, Any]] = []
    for path in sorted((Path(results_dir) / "runs").glob(f"{pattern}/result.json")):
        r = read_result(path)
        if r is not None and r["status"] == "completed" and not _well_formed(r):
            r = None
        counts[r["status"] if r is not None else "unreadable"] += 1
        if r is not None and r["status"] == "completed":
            done.append({**r, "_dir": str(path.parent)})
    return Collected(done, dict(counts))


def _well_formed(r: dict[str, Any]) -> bool:
    try:
        return (
            isinstance(r["metrics"]["test"], dict)
            and float(r["score"]) == float(r["score"])
            and int(r["params"]["backbone"]) > 0
            and int(r["params"]["trainable"]) >= 0
            and int(r["params"]["stored"]) >= 0
            and int(r["stored_bytes"]) >= 0
        )
    except (KeyError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# aggregation (pure)


# header suffix when a task shows several metrics ("MRPC F1")
METRIC_LABELS = {
    "accuracy": "acc",
    "accuracy_mm": "acc-mm",
    "f1": "F1",
    "matthews_correlation": "MCC",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
}


def columns_for(tasks: list[TaskConfig]) -> list[Column]:
    """The table's columns: one per (task, reported metric), labelled as in papers."""
    out = []
    for t in tasks:
        for m in t.report:
            label = t.folder if len(t.report) == 1 else f"{t.folder} {METRIC_LABELS.get(m, m)}"
            out.append(Column(t.name, m, label))
    return out


def order_tasks(names: set[str]) -> list[str]:
    """Task names in GLUE's order; unknown tasks last, alphabetically."""
    return sorted(names, key=lambda n: (GLUE_ORDER.index(n) if n in GLUE_ORDER else len(GLUE_ORDER), n))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median over runs of params[key] / params.backbone, in percent."""
    return _median([100.0 * r["params"][key] / r["params"]["backbone"] for r in runs])


def _avg(scores: dict[str, Cell], tasks: list[TaskConfig]) -> float | None:
    if not tasks or any(t.name not in scores for t in tasks):
        return None
    return statistics.fmean(scores[t.name].median for t in tasks)


def measured_rows(runs: list[dict[str, Any]], tasks: list[TaskConfig]) -> list[Row]:
    """One row per (model, method_tag, protocol); model/protocol join the label only when the
    table has several."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seen: dict[tuple, str] = {}
    for r in runs:
        key = (r["model"], r["method_tag"], r.get("protocol", "unknown"))
        run = (*key, r["task"], r["seed"])
        if run in seen:
            raise UserError(
                f"two completed runs of {'/'.join(map(str, run))}: {seen[run]} and {r['_dir']}; "
                "narrow report.runs to one experiment"
            )
        seen[run] = r["_dir"]
        groups.setdefault(key, []).append(r)
    several_models = len({k[0] for k in groups}) > 1
    several_protocols = len({k[2] for k in groups}) > 1
    rows = []
    for (model, tag, protocol), rs in groups.items():
        rs = sorted(rs, key=lambda r: (r["task"], r["seed"]))
        cells: dict[tuple[str, str], Cell] = {}
        for t in tasks:
            for m in t.report:
                vals = [
                    100.0 * float(r["metrics"]["test"][m])
                    for r in rs
                    if r["task"] == t.name and r["metrics"]["test"].get(m) is not None
                ]
                if vals:
                    cells[(t.name, m)] = Cell(vals)
        scores = {
            t.name: Cell([float(r["score"]) for r in rs if r["task"] == t.name])
            for t in tasks
            if any(r["task"] == t.name for r in rs)
        }
        label = tag + (f" ({model})" if several_models else "") + (f" [{protocol}]" if several_protocols else "")
        rows.append(
            Row(
                label=label,
                published=False,
                model=model,
                method_tag=tag,
                protocol=protocol,
                cells=cells,
                scores=scores,
                avg=_avg(scores, tasks),
                trainable_pct=_pct(rs, "trainable"),
                stored_pct=_pct(rs, "stored"),
                bytes_per_task=_median([float(r["stored_bytes"]) for r in rs]),
                task_bytes={
                    t.name: _median([float(r["stored_bytes"]) for r in rs if r["task"] == t.name])
                    for t in tasks
                    if t.name in scores
                },
            )
        )
    # paper order: the most stored first (full fine-tuning), ties by tag
    return sorted(rows, key=lambda r: (r.model, -(r.stored_pct or 0.0), r.method_tag, r.protocol))


def reference_rows(refs: list[Reference], tasks: list[TaskConfig]) -> list[Row]:
    """Published rows from reference files, one Row per row of each source."""
    rows = []
    for i, ref in enumerate(refs):
        for rr in ref.rows:
            cells = {(t, m): Cell([v]) for t, ms in rr.scores.items() for m, v in ms.items()}
            scores = {t.name: cells[(t.name, t.headline)] for t in tasks if (t.name, t.headline) in cells}
            rows.append(
                Row(
                    label=f"{rr.label} ({ref.model})",
                    published=True,
                    model=ref.model,
                    method_tag=rr.label,
                    protocol=ref.protocol,
                    cells=cells,
                    scores=scores,
                    avg=_avg(scores, tasks),
                    trainable_pct=_ref_pct(rr.trainable, ref),
                    stored_pct=_ref_pct(rr.stored, ref),
                    bytes_per_task=None,
                    runs=ref.runs,
                    note=i + 1,
                    published_avg=rr.avg,
                )
            )
    return rows


def _ref_pct(n: int | None, ref: Reference) -> float | None:
    return None if n is None else 100.0 * n / ref.backbone


def build_table(
    experiment: str, runs: list[dict[str, Any]], counts: dict[str, int], refs: list[Reference], spread: str = "std"
) -> Table:
    """The table from completed results and reference files. Columns: the tasks of the measured
    runs (the references' tasks when nothing was measured), in GLUE order."""
    names = {r["task"] for r in runs} or {t for ref in refs for rr in ref.rows for t in rr.scores}
    tasks = [load_task(n) for n in order_tasks(names)]
    return Table(
        experiment=experiment,
        columns=columns_for(tasks),
        tasks=tasks,
        rows=measured_rows(runs, tasks),
        references=reference_rows(refs, tasks),
        counts=counts,
        protocols=dict(sorted(Counter(r.get("protocol", "unknown") for r in runs).items())),
        models=sorted({r["model"] for r in runs}),
        sources=refs,
        spread=spread,
    )
