"""A report `Table` as text: Markdown, CSV (long format, with n and spread), LaTeX (booktabs) and a
rich console table. Every renderer draws from the same `grid()` and `notes()`, so the formats agree
cell for cell. Output is a pure function of the table: no timestamps, byte-identical reruns."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from peft_cli.core.console import console
from peft_cli.core.files import write_text
from peft_cli.report.table import SKIPPED, Row, Table

DASH = "—"  # an empty cell: no run, or an Avg that would miss a task
DAGGER = "†"  # fewer seeds than the table's most


# --------------------------------------------------------------------------------------------
# numbers -> text


def fmt_pct(v: float | None) -> str:
    """100.00, 2.13, 0.24, 0.0051: two decimals from 1 %, two significant digits below."""
    if v is None:
        return DASH
    if v == 0:
        return "0"
    if v >= 1:
        return f"{v:.2f}"
    v = float(f"{v:.2g}")  # round first, so 0.0999 prints 0.10, not 0.100
    return f"{v:.{max(2, 1 - math.floor(math.log10(v)))}f}"


def fmt_bytes(n: float | None) -> str:
    """Decimal units, three significant digits: 512 B, 142 KB, 1.5 MB, 90.9 MB."""
    if n is None:
        return DASH
    for unit in ("B", "KB", "MB", "GB"):
        if n < 999.5 or unit == "GB":
            break
        n /= 1000
    return f"{float(f'{n:.3g}'):g} {unit}"


def header(table: Table) -> list[str]:
    """The table's header cells."""
    return ["Method", *(c.label for c in table.columns), "Avg", "% trainable", "% stored", "Size/task"]


def cells(table: Table, row: Row) -> list[str]:
    """One row's cells as text (medians, † marks, Avg, fractions, size)."""
    out = [row.label + (f" [{row.note}]" if row.note else "")]
    for c in table.columns:
        cell = row.cells.get((c.task, c.metric))
        out.append(DASH if cell is None else f"{cell.median:.2f}" + (DAGGER if table.marked(row, cell) else ""))
    out.append(DASH if row.avg is None else f"{row.avg:.2f}" + (DAGGER if table.avg_marked(row) else ""))
    out += [fmt_pct(row.trainable_pct), fmt_pct(row.stored_pct), fmt_bytes(row.bytes_per_task)]
    return out


def grid(table: Table) -> list[list[str] | None]:
    """Body rows; None is the separator before the published rows."""
    body: list[list[str] | None] = [cells(table, r) for r in table.rows]
    if table.references:
        body.append(None)
        body += [cells(table, r) for r in table.references]
    return body


def caption(table: Table) -> str:
    """The table's caption: experiment, statistic, models, split protocol."""
    if not table.models:
        models = "no measured runs"
    else:
        models = ("model " if len(table.models) == 1 else "models ") + ", ".join(table.models)
    if len(table.protocols) == 1:
        protocol = next(iter(table.protocols))
    else:
        protocol = ", ".join(f"{p} ({n} runs)" for p, n in table.protocols.items()) or "none"
    return (
        f"Experiment {table.experiment}: GLUE test scores in %, median over seeds; {models}; "
        f"split protocol: {protocol}."
    )


def notes(table: Table) -> list[str]:
    """The table's footnotes: definitions, fewer-seed marks, skipped runs, sources."""
    headlines = ", ".join(
        c.label for t in table.tasks for c in table.columns if c.task == t.name and c.metric == t.headline
    )
    out = [
        f"Avg: mean over the {len(table.tasks)} tasks of each row's per-task median headline score "
        f"({headlines}); {DASH} when the row lacks a task. "
        "% trainable / % stored: parameters updated in training / written to the artifact, over the "
        "backbone's parameters (task head excluded). Size/task: median bytes on disk of one run's artifact "
        "(head included)."
    ]
    short = [
        f"{r.label} {c.label} n={cell.n} of {table.n_max}"
        for r in table.rows
        for c in table.columns
        if table.marked(r, cell := r.cells.get((c.task, c.metric)))
    ]
    if short:
        out.append(
            f"{DAGGER} fewer seeds: " + "; ".join(short) + f". An Avg is marked {DAGGER} when one of its medians is."
        )
    counts = table.counts
    out.append(
        f"Runs: {counts.get('completed', 0)} completed result.json read; skipped: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in SKIPPED)
        + "."
    )
    for i, ref in enumerate(table.sources, 1):
        rows = [r for r in table.references if r.note == i]
        quoted = ", ".join(f"{r.method_tag} {r.published_avg:.2f}" for r in rows if r.published_avg is not None)
        out.append(
            f"[{i}] published, not measured here ({ref.model}, {ref.protocol} split): {ref.source}."
            + (f" Avg as published (over the source's tasks): {quoted}." if quoted else "")
        )
    return out


# --------------------------------------------------------------------------------------------
# formats


def to_markdown(table: Table) -> str:
    """The table as Markdown (caption, table, notes)."""
    head = header(table)
    lines = [
        f"**{caption(table)}**",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for row in grid(table):
        row = row or ["*published*"] + [""] * (len(head) - 1)
        lines.append("| " + " | ".join(s.replace("|", "\\|") for s in row) + " |")
    return "\n".join(lines + [""] + [x for n in notes(table) for x in (n, "")])


def to_csv(table: Table) -> str:
    """Long format: one line per (row, task, metric). Summary lines use task `all`. n counts seeds
    (metric cells), runs (stored_bytes, *_pct) or tasks (avg); published cells give the source's n."""
    spread = ["std"] if table.spread == "std" else ["min", "max"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["row", "kind", "model", "method_tag", "protocol", "task", "metric", "median", "n", *spread, "fewer_seeds"]
    )
    num = lambda v, f=".4f": "" if v is None else format(v, f)  # noqa: E731
    for r in table.rows + table.references:
        base = [r.label, "published" if r.published else "measured", r.model, r.method_tag, r.protocol]
        for c in table.columns:
            cell = r.cells.get((c.task, c.metric))
            if cell is None:
                continue
            if r.published:
                w.writerow(base + [c.task, c.metric, num(cell.median), r.runs or "", *[""] * len(spread), ""])
                continue
            s = [num(cell.std)] if table.spread == "std" else [num(min(cell.values)), num(max(cell.values))]
            w.writerow(base + [c.task, c.metric, num(cell.median), cell.n, *s, int(table.marked(r, cell))])
        for task, b in r.task_bytes.items():
            w.writerow(base + [task, "stored_bytes", num(b, ".0f"), r.scores[task].n, *[""] * len(spread), ""])
        runs = sum(s.n for s in r.scores.values()) if not r.published else ""
        w.writerow(base + ["all", "avg", num(r.avg), len(r.scores), *[""] * len(spread), ""])
        w.writerow(base + ["all", "trainable_pct", num(r.trainable_pct, ".6f"), runs, *[""] * len(spread), ""])
        w.writerow(base + ["all", "stored_pct", num(r.stored_pct, ".6f"), runs, *[""] * len(spread), ""])
        if not r.published:
            w.writerow(base + ["all", "stored_bytes", num(r.bytes_per_task, ".0f"), runs, *[""] * len(spread), ""])
    return buf.getvalue()


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    DAGGER: r"$^\dagger$",
    DASH: "--",
}


def tex_escape(s: str) -> str:
    """LaTeX-escape a cell."""
    return re.sub("|".join(map(re.escape, _TEX)), lambda m: _TEX[m.group(0)], s)


def to_latex(table: Table) -> str:
    """The table as a booktabs LaTeX table."""
    head = header(table)
    row = lambda cs: " & ".join(tex_escape(c) for c in cs) + r" \\"  # noqa: E731
    lines = [
        f"% peftx report, experiment {table.experiment}: generated from result.json files, do not edit",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
        r"\toprule",
        row(head),
        r"\midrule",
    ]
    for cs in grid(table):
        lines += (
            [r"\midrule", rf"\multicolumn{{{len(head)}}}{{l}}{{\textit{{published}}}} \\"] if cs is None else [row(cs)]
        )
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + tex_escape(caption(table)) + "}",
        r"\label{tab:" + tex_escape(table.experiment) + "}",
        r"\par\smallskip",
        r"{\footnotesize " + r" \par ".join(tex_escape(n) for n in notes(table)) + "}",
        r"\end{table}",
        "",
    ]
    return "\n".join(lines)


def print_table(table: Table) -> None:
    """The table on stdout: its caption, the table, its notes. Caption and notes are lines of their
    own (not the rich table's title/caption, which fold to the table's width); off a terminal no
    line is folded (core/console.py)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table as RichTable

    out = console()
    t = RichTable(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    body = grid(table)
    for i, h in enumerate(header(table)):
        # numbers never fold; a long method label folds when the terminal is narrow
        width = max((len(cs[i]) for cs in body if cs is not None), default=1)
        t.add_column(
            escape(h), justify="left" if i == 0 else "right", overflow="fold", min_width=None if i == 0 else width
        )
    for cs in body:
        if cs is None:
            t.add_section()
            t.add_row("[italic]published[/italic]")
        else:
            t.add_row(*map(escape, cs))
    out.print(escape(caption(table)))
    out.print(t)
    for note in notes(table):
        out.print(escape(note))


def write_tables(table: Table, stem: Path) -> list[Path]:
    """<stem>.md, .csv, .tex, each written atomically."""
    out = []
    for suffix, render in ((".md", to_markdown), (".csv", to_csv), (".tex", to_latex)):
        path = stem.with_name(stem.name + suffix)
        write_text(path, render(table))
        out.append(path)
    return out
