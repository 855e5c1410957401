"""Completed result.json files -> a report `Table` (table.py). The numbers, precisely:

- A row is one (model, method_tag, protocol). Where its runs of a task hold several settings (a
  grid), the cell is the setting that selection on validation chose (selection/rule.py: best median
  validation headline over the seeds every setting ran), over its reported seeds; every setting is
  listed in <name>.settings.csv and every run in <name>.seeds.csv.
- A cell is the median (report.stat=mean: the mean) over seeds of one test metric, in percent
  (`statistics.median`: the middle value for odd n, the mean of the two middle values for even n).
  The CSV keeps n and the spread (sample std, or min and max); report.show_spread=true prints it in
  the Markdown and LaTeX cells too. A cell with fewer seeds than the largest n in the table is marked †.
- Avg = the mean, over the table's tasks, of the row's per-task median (or mean) of `score` (the
  task's headline metric). A row that lacks any of the table's tasks has no Avg ("—"); it is never
  an average over fewer tasks. Avg is marked † when one of its medians is. Its spread is that of
  the per-seed Avgs (seeds present in every task of the row).
- % trainable / % stored = median over the row's runs of params.trainable / params.backbone and
  params.stored / params.backbone, x100 (the task head is excluded from both). Size/task = median
  over the row's runs of `stored_bytes` (one task's artifact on disk, head included).
- Published reference rows (conf/reference/) sit under their own separator; their Avg follows the
  same definition over the table's tasks, and the source's own Avg is quoted in the footnote.
"""

from __future__ import annotations

import re
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
from peft_cli.selection.rule import Choice, canon, group_of, select, setting_of

GLUE_ORDER = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")  # tasks not listed go last
SPREADS = ("std", "minmax")
STATS = ("median", "mean")

# --------------------------------------------------------------------------------------------
# config


@dataclass
class ReportOptions:
    """The `report:` block of conf/config.yaml."""

    runs: str | None = None  # glob under results/runs; None = "<experiment>/*/*/*/*"
    spread: str = "std"  # std | minmax (the CSV's spread columns)
    references: list[str] = field(default_factory=list)  # conf/reference/NAME.yaml (or paths)
    stat: str = "median"  # median | mean: the statistic over seeds in every cell and in Avg
    show_spread: bool = False  # "± std" (or "(min–max)") in the Markdown/LaTeX cells, error bars in the plot
    display_names: bool = False  # row labels from conf/method/*.yaml `display_name` instead of the tag
    names: dict[str, str] = field(default_factory=dict)  # method_tag or method name -> row label
    name: str | None = None  # output file stem; None = the experiment (with report.runs: experiment-<glob>)


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

    @property
    def stem(self) -> str:
        """Output file name without suffix: a narrowed report never overwrites the experiment's table."""
        if self.report.name:
            return self.report.name
        if self.report.runs is None:
            return self.experiment
        return f"{self.experiment}-" + (re.sub(r"[^A-Za-z0-9]+", "_", self.report.runs).strip("_") or "runs")


def report_config(cfg: dict[str, Any]) -> ReportConfig:
    """The composed plain dict (compose_dict) -> ReportConfig, strictly."""
    rc = from_dict(ReportConfig, {k: cfg.get(k, {}) for k in ("experiment", "results", "report")}, "")
    if rc.report.spread not in SPREADS:
        raise UserError(f"config key 'report.spread' is {rc.report.spread!r}; choose one of: {', '.join(SPREADS)}")
    if rc.report.stat not in STATS:
        raise UserError(f"config key 'report.stat' is {rc.report.stat!r}; choose one of: {', '.join(STATS)}")
    if rc.report.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", rc.report.name):
        raise UserError(f"config key 'report.name' is {rc.report.name!r}; give a file name stem such as cpu_rte")
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


def _avg(scores: dict[str, Cell], tasks: list[TaskConfig], stat: str = "median") -> float | None:
    if not tasks or any(t.name not in scores for t in tasks):
        return None
    return statistics.fmean(scores[t.name].center(stat) for t in tasks)


def _seed_avgs(rs: list[dict[str, Any]], tasks: list[TaskConfig]) -> list[float]:
    """Per-seed Avg over the table's tasks, for the seeds every task of the row has (the Avg's spread)."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rs:
        by_seed.setdefault(int(r["seed"]), {})[r["task"]] = float(r["score"])
    names = [t.name for t in tasks]
    return [statistics.fmean(v[n] for n in names) for _, v in sorted(by_seed.items()) if names and set(names) <= set(v)]


# --------------------------------------------------------------------------------------------
# selection and labels


def chosen_runs(runs: list[dict[str, Any]], tasks: list[TaskConfig]) -> tuple[list[dict[str, Any]], dict[Any, Choice]]:
    """The runs the table reports (each cell's chosen setting, its reported seeds) and every
    group's Choice. Two completed runs of one group, setting and seed are an error."""
    seen: dict[tuple, str] = {}
    for r in runs:
        run = (*group_of(r), canon(setting_of(r)), r["seed"])
        if run in seen:
            where = "/".join(map(str, (*group_of(r), r["seed"])))
            raise UserError(
                f"two completed runs of {where}: {seen[run]} and {r['_dir']}; narrow report.runs to one experiment"
            )
        seen[run] = r["_dir"]
    choices = select(runs, {t.name: t.headline for t in tasks})
    kept = [
        r
        for r in runs
        if canon(setting_of(r)) == canon((c := choices[group_of(r)]).setting) and r["seed"] in c.reported_seeds
    ]
    return kept, choices


def display_name(method: str) -> str | None:
    """`display_name` of conf/method/<method>.yaml, if it has one."""
    import yaml

    path = conf_dir() / "method" / f"{method}.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("display_name")


def row_label(tag: str, method: str, options: ReportOptions) -> str:
    """A row's label: report.names[tag], else (report.display_names, or report.names[method]) the
    method's display name with the tag's variant in parentheses (`PaFi (smallest-d0.005)`), else the tag."""
    if tag in options.names:
        return options.names[tag]
    if not options.display_names and method not in options.names:
        return tag
    name = options.names.get(method) or display_name(method) or method
    rest = tag[len(method) :].lstrip("-") if tag.startswith(method) else tag
    return f"{name} ({rest})" if rest else name


# --------------------------------------------------------------------------------------------
# rows


def measured_rows(
    runs: list[dict[str, Any]],
    tasks: list[TaskConfig],
    options: ReportOptions | None = None,
    choices: dict[Any, Choice] | None = None,
) -> list[Row]:
    """One row per (model, method_tag, protocol) from the reported runs (chosen_runs); model/protocol
    join the label only when the table has several."""
    options = options or ReportOptions()
    choices = choices or {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["method_tag"], r.get("protocol", "unknown")), []).append(r)
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
        chosen = {
            t: c.setting
            for (g_model, g_tag, g_protocol, t), c in choices.items()
            if (g_model, g_tag, g_protocol) == (model, tag, protocol) and c.compared
        }
        label = row_label(tag, rs[0].get("method", tag), options)
        label += (f" ({model})" if several_models else "") + (f" [{protocol}]" if several_protocols else "")
        rows.append(
            Row(
                label=label,
                published=False,
                model=model,
                method_tag=tag,
                protocol=protocol,
                cells=cells,
                scores=scores,
                avg=_avg(scores, tasks, options.stat),
                trainable_pct=_pct(rs, "trainable"),
                stored_pct=_pct(rs, "stored"),
                bytes_per_task=_median([float(r["stored_bytes"]) for r in rs]),
                task_bytes={
                    t.name: _median([float(r["stored_bytes"]) for r in rs if r["task"] == t.name])
                    for t in tasks
                    if t.name in scores
                },
                chosen=chosen,
                avg_values=_seed_avgs(rs, tasks),
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
    experiment: str,
    runs: list[dict[str, Any]],
    counts: dict[str, int],
    refs: list[Reference],
    spread: str = "std",
    options: ReportOptions | None = None,
) -> Table:
    """The table from completed results and reference files. Columns: the tasks of the measured
    runs (the references' tasks when nothing was measured), in GLUE order."""
    options = options or ReportOptions(spread=spread)
    names = {r["task"] for r in runs} or {t for ref in refs for rr in ref.rows for t in rr.scores}
    tasks = [load_task(n) for n in order_tasks(names)]
    kept, choices = chosen_runs(runs, tasks)
    rows = measured_rows(kept, tasks, options, choices)
    return Table(
        experiment=experiment,
        columns=columns_for(tasks),
        tasks=tasks,
        rows=rows,
        references=reference_rows(refs, tasks),
        counts=counts,
        protocols=dict(sorted(Counter(r.get("protocol", "unknown") for r in runs).items())),
        models=sorted({r["model"] for r in runs}),
        sources=refs,
        spread=options.spread,
        stat=options.stat,
        show_spread=options.show_spread,
        runs=runs,
        choices=choices,
        labels={(r.model, r.method_tag, r.protocol): r.label for r in rows},
    )
