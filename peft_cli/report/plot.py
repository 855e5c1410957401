"""The paper's Figure 1 for a report `Table`: Avg score against % stored parameters (log axis), one
labelled marker per method, marker area by stored bytes per task. Published rows are hollow
diamonds, drawn only when their file gives a stored count. Rows without an Avg are left out.

Uses the Agg canvas directly (no pyplot, no global backend switch), and fixed metadata so that
reruns write identical bytes."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from peft_cli.core.files import atomic_path
from peft_cli.report.table import Row, Table

METADATA = {"png": {"Software": "peftx"}, "pdf": {"Creator": "peftx", "Producer": "peftx", "CreationDate": None}}
AREA = (40.0, 400.0)  # marker area (points^2) of the smallest and the largest artifact
PUBLISHED_AREA = 70.0
LABEL_GAP = 8.5  # points between the centres of stacked labels (fontsize 7)


def plotted(rows: list[Row]) -> list[Row]:
    """Rows that have a point: an Avg and a positive stored fraction."""
    return [r for r in rows if r.avg is not None and r.stored_pct is not None and r.stored_pct > 0]


def areas(rows: list[Row]) -> list[float]:
    """Area grows with log(bytes): artifacts span orders of magnitude (BitFit KB, full FT 100 MB)."""
    logs = [math.log(max(r.bytes_per_task or 1.0, 1.0)) for r in rows]
    lo, hi = min(logs, default=0.0), max(logs, default=0.0)
    return [AREA[0] + (AREA[1] - AREA[0]) * ((v - lo) / (hi - lo) if hi > lo else 0.5) for v in logs]


def error_bar(table: Table, row: Row) -> tuple[float, float] | None:
    """(below, above) the Avg: ± the sample std of the row's per-seed Avgs, or down to their min and
    up to their max (report.spread=minmax); None without report.show_spread or with < 2 seeds."""
    vals = row.avg_values
    if not table.show_spread or len(vals) < 2 or row.avg is None:
        return None
    if table.spread == "std":
        sd = statistics.stdev(vals)
        return (sd, sd)
    return (max(row.avg - min(vals), 0.0), max(max(vals) - row.avg, 0.0))


def figure(table: Table):
    """The Avg-vs-stored figure of `table` (a matplotlib Figure on the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    measured, published = plotted(table.rows), plotted(table.references)
    xs = [math.log10(r.stored_pct) for r in measured + published]
    mid = (min(xs, default=0.0) + max(xs, default=0.0)) / 2

    labels: list[tuple[Row, str, float, dict]] = []  # drawn last, once the axes' scale is final
    for i, (row, area) in enumerate(zip(measured, areas(measured), strict=True)):
        ax.scatter(
            [row.stored_pct],
            [row.avg],
            s=area,
            color=f"C{i % 10}",
            alpha=0.85,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        bar = error_bar(table, row)
        if bar is not None:
            ax.errorbar(
                [row.stored_pct],
                [row.avg],
                yerr=[[bar[0]], [bar[1]]],
                fmt="none",
                ecolor="0.3",
                elinewidth=0.8,
                capsize=3,
                zorder=2,
            )
        labels.append((row, row.label, area, {}))
    for row in published:
        ax.scatter(
            [row.stored_pct],
            [row.avg],
            s=PUBLISHED_AREA,
            marker="D",
            facecolors="none",
            edgecolors="black",
            linewidths=1.0,
            zorder=3,
        )
        labels.append((row, f"{row.label} [{row.note}], published", PUBLISHED_AREA, {"style": "italic"}))
    if measured or published:
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.1)
    else:
        ax.text(0.5, 0.5, "no row has a score on every task", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("% stored parameters per task (log scale, task head excluded)")
    ax.set_ylabel(f"Avg score over {len(table.tasks)} tasks (%)")
    ax.set_title(f"{table.experiment}: Avg vs stored fraction", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    left_out = [r.label for r in table.rows if r not in measured]
    bars = any(error_bar(table, r) for r in measured)
    spread = "± sample std" if table.spread == "std" else "min–max"
    note = (
        "marker area ~ log(bytes stored per task); hollow: published"
        + (f"\nerror bars: {spread} of the per-seed Avgs" if bars else "")
        + (f"\nnot drawn (no Avg): {', '.join(left_out)}" if left_out else "")
    )
    ax.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=6, color="0.4", transform=ax.transAxes)
    fig.tight_layout()
    place_labels(ax, labels, mid)
    return fig


def place_labels(ax, labels: list[tuple[Row, str, float, dict]], mid: float) -> None:
    """Each label beside its marker's edge (radius ~ sqrt(area)/2 points), towards the plot's centre.
    Labels of markers at (nearly) the same x on the same side are pushed apart vertically so that
    they never overlap (e.g. three masks at one density with close scores)."""
    x = [math.log10(row.stored_pct) for row, _, _, _ in labels]
    right = [xi <= mid for xi in x]
    groups: dict[tuple[bool, float], list[int]] = {}
    for i in range(len(labels)):
        groups.setdefault((right[i], round(x[i], 1)), []).append(i)
    to_pt = 72.0 / ax.figure.dpi
    dy = [0.0] * len(labels)
    for members in groups.values():
        y = {i: ax.transData.transform((labels[i][0].stored_pct, labels[i][0].avg))[1] * to_pt for i in members}
        order = sorted(members, key=lambda i: y[i])
        placed = [y[order[0]]]
        for i in order[1:]:
            placed.append(max(y[i], placed[-1] + LABEL_GAP))
        shift = (sum(placed) - sum(y[i] for i in order)) / len(order)  # keep the group centred
        for i, p in zip(order, placed, strict=True):
            dy[i] = p - shift - y[i]
    for (row, text, area, kw), off, r in zip(labels, dy, right, strict=True):
        d = math.sqrt(area) / 2 + 2
        ax.annotate(
            text,
            (row.stored_pct, row.avg),
            xytext=(d if r else -d, off),
            textcoords="offset points",
            ha="left" if r else "right",
            va="center",
            fontsize=7,
            **kw,
        )


def write_plot(table: Table, stem: Path) -> list[Path]:
    """<stem>.png and <stem>.pdf, each written atomically."""
    fig = figure(table)
    out = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=METADATA[fmt])
        out.append(path)
    return out
