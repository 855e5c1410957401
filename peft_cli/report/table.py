"""The report's table model: columns (task, metric), cells (one value per seed), rows (a method,
or a published reference row) and the table. Pure data; build.py fills it, render.py and plot.py
draw it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from peft_cli.core.config import TaskConfig
from peft_cli.report.reference import Reference

SKIPPED = ("failed", "cancelled", "running", "unreadable")  # result.json states a table does not count


@dataclass(frozen=True)
class Column:
    task: str  # conf/task name
    metric: str  # GLUE metric name, as in result.json
    label: str  # header, e.g. "MRPC F1"


@dataclass
class Cell:
    values: list[float]  # percent, one per seed (published: one value)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    def center(self, stat: str) -> float:
        """The cell's statistic over seeds: median or mean."""
        return statistics.fmean(self.values) if stat == "mean" else self.median


@dataclass
class Row:
    label: str
    published: bool
    model: str
    method_tag: str
    protocol: str
    cells: dict[tuple[str, str], Cell]  # (task, metric) -> cell
    scores: dict[str, Cell]  # task -> headline `score` per seed
    avg: float | None
    trainable_pct: float | None
    stored_pct: float | None
    bytes_per_task: float | None  # median stored_bytes over the row's runs
    task_bytes: dict[str, float] = field(default_factory=dict)  # task -> median stored_bytes
    runs: int | None = None  # seeds behind published cells
    note: int | None = None  # footnote number of a published row's source
    published_avg: float | None = None
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> setting chosen from several
    avg_values: list[float] = field(default_factory=list)  # per-seed Avg (seeds present in every task)


@dataclass
class Table:
    experiment: str
    columns: list[Column]
    tasks: list[TaskConfig]
    rows: list[Row]  # measured
    references: list[Row]  # published, after a separator
    counts: dict[str, int]  # completed / failed / cancelled / running / unreadable
    protocols: dict[str, int]  # split protocol -> completed runs
    models: list[str]
    sources: list[Reference]  # footnote i+1 = sources[i]
    spread: str = "std"
    stat: str = "median"  # median | mean
    show_spread: bool = False  # ± in Markdown/LaTeX cells, error bars in the plot
    runs: list[dict[str, Any]] = field(default_factory=list)  # every completed result read (per-seed CSV)
    choices: dict[Any, Any] = field(default_factory=dict)  # selection group -> Choice (selection/rule.py)
    labels: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (model, tag, protocol) -> row label

    @property
    def selected(self) -> bool:
        """Whether any cell was chosen among several settings (the caption then states the rule)."""
        return any(c.compared for c in self.choices.values())

    @property
    def n_max(self) -> int:
        return max((c.n for r in self.rows for c in r.cells.values()), default=0)

    def marked(self, row: Row, cell: Cell | None) -> bool:
        """† : a measured cell with fewer seeds than the most any cell of the table has."""
        return cell is not None and not row.published and cell.n < self.n_max

    def avg_marked(self, row: Row) -> bool:
        return row.avg is not None and any(self.marked(row, row.scores.get(t.name)) for t in self.tasks)
