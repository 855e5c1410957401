"""A report `Table` as text: Markdown, CSV (long format, with n and spread), LaTeX (booktabs) and a
rich console table. Every renderer draws from the same `grid()` and `notes()`, so the formats agree
cell for cell. Output is a pure function of the table: no timestamps, byte-identical reruns."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path

from peft_cli.core.console import console
from peft_cli.core.files import write_text
from peft_cli.report.table import SKIPPED, Row, Table
from peft_cli.selection.rule import canon, group_of, setting_of

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


def spread_text(table: Table, values: list[float]) -> str:
    """` ± 1.23` (std) or ` (70.10–72.00)` (minmax) after a cell when report.show_spread; '' otherwise
    or with fewer than two values."""
    if not table.show_spread or len(values) < 2:
        return ""
    if table.spread == "std":
        return f" ± {statistics.stdev(values):.2f}"
    return f" ({min(values):.2f}–{max(values):.2f})"


def cells(table: Table, row: Row) -> list[str]:
    """One row's cells as text (medians or means, ± spread, † marks, Avg, fractions, size)."""
    out = [row.label + (f" [{row.note}]" if row.note else "")]
    for c in table.columns:
        cell = row.cells.get((c.task, c.metric))
        if cell is None:
            out.append(DASH)
            continue
        mark = DAGGER if table.marked(row, cell) else ""
        out.append(f"{cell.center(table.stat):.2f}" + ("" if row.published else spread_text(table, cell.values)) + mark)
    if row.avg is None:
        out.append(DASH)
    else:
        mark = DAGGER if table.avg_marked(row) else ""
        out.append(f"{row.avg:.2f}" + ("" if row.published else spread_text(table, row.avg_values)) + mark)
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
    spread = ""
    if table.show_spread:
        spread = " ± sample std" if table.spread == "std" else " (min–max)"
    text = (
        f"Experiment {table.experiment}: GLUE test scores in %, {table.stat}{spread} over seeds; {models}; "
        f"split protocol: {protocol}."
    )
    if table.selected:
        text += (
            " Where a method was run at several settings (a grid), each cell reports the setting with the best "
            "median validation score (the task's headline metric) over the seeds every setting ran, tie broken "
            "by the mean, then the smaller value; its test scores are those of its other seeds (the final stage) "
            "when it has them. Test scores play no part in the choice."
        )
    return text


def notes(table: Table) -> list[str]:
    """The table's footnotes: definitions, fewer-seed marks, skipped runs, sources."""
    headlines = ", ".join(
        c.label for t in table.tasks for c in table.columns if c.task == t.name and c.metric == t.headline
    )
    out = [
        f"Avg: mean over the {len(table.tasks)} tasks of each row's per-task {table.stat} headline score "
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
    chosen = [
        f"{r.label}: "
        + ", ".join(f"{_task_label(table, t)} {setting_label(r.chosen[t])}" for t in _ordered(table, r.chosen))
        for r in table.rows
        if r.chosen
    ]
    if chosen:
        out.append("Chosen settings (all settings in the .settings.csv file): " + "; ".join(chosen) + ".")
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


def setting_label(setting: dict) -> str:
    """`lr 0.001, wd 0.0`: a setting as text, numbers as written (repr)."""
    from peft_cli.run.identity import ABBREVIATIONS

    return ", ".join(f"{ABBREVIATIONS.get(k, k)} {v!r}" for k, v in sorted(setting.items())) or "default"


def _task_label(table: Table, task: str) -> str:
    return next((t.folder for t in table.tasks if t.name == task), task)


def _ordered(table: Table, by_task: dict) -> list[str]:
    return [t.name for t in table.tasks if t.name in by_task]


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


def to_settings_csv(table: Table) -> str:
    """Every setting of every (model, method_tag, protocol, task) group: the validation and test
    headline over all its seeds (median, n, spread), the validation median over the selection
    seeds that decided, and whether it was chosen. Values in percent."""
    spread = ["std"] if table.spread == "std" else ["min", "max"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["row", "model", "method_tag", "protocol", "task", "metric", "setting", "chosen", "n", "seeds"]
        + ["validation_median", *(f"validation_{x}" for x in spread), "test_median", *(f"test_{x}" for x in spread)]
        + ["selection_seeds", "selection_validation_median"]
    )
    headline = {t.name: t.headline for t in table.tasks}
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in table.runs:
        groups.setdefault(group_of(r), {}).setdefault(canon(setting_of(r)), []).append(r)
    for g in sorted(groups, key=lambda g: (_row_index(table, g), _task_index(table, g[3]))):
        choice = table.choices[g]
        metric = headline[g[3]]
        for key in sorted(groups[g]):
            rs = sorted(groups[g][key], key=lambda r: r["seed"])
            val = [_pct_of(r["metrics"].get("validation", {}).get(metric)) for r in rs]
            test = [_pct_of(r["metrics"].get("test", {}).get(metric)) for r in rs]
            w.writerow(
                [table.labels.get(g[:3], g[1]), *g, metric, key, int(key == canon(choice.setting)), len(rs)]
                + [" ".join(str(r["seed"]) for r in rs)]
                + [_num(_mid(val)), *_spread(val, table.spread), _num(_mid(test)), *_spread(test, table.spread)]
                + [" ".join(map(str, choice.selection_seeds)), _num(_pct_of(choice.validation.get(key)))]
            )
    return buf.getvalue()


def to_seeds_csv(table: Table) -> str:
    """One line per completed run and metric (validation and test), chosen or not, with its setting
    and whether the table reports it."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["row", "model", "method_tag", "protocol", "task", "setting", "seed", "reported", "split", "metric", "value"]
    )
    for r in sorted(
        table.runs,
        key=lambda r: (
            _row_index(table, group_of(r)),
            _task_index(table, r["task"]),
            canon(setting_of(r)),
            r["seed"],
        ),
    ):
        g = group_of(r)
        choice = table.choices[g]
        reported = canon(setting_of(r)) == canon(choice.setting) and r["seed"] in choice.reported_seeds
        base = [table.labels.get(g[:3], g[1]), *g, canon(setting_of(r)), r["seed"], int(reported)]
        for split in ("validation", "test"):
            for metric, value in sorted((r["metrics"].get(split) or {}).items()):
                w.writerow(base + [split, metric, _num(_pct_of(value))])
    return buf.getvalue()


def _row_index(table: Table, g: tuple) -> tuple:
    """Table order of a group's row (rows not shown, e.g. no runs kept, last by tag)."""
    order = [(r.model, r.method_tag, r.protocol) for r in table.rows]
    return (order.index(g[:3]) if g[:3] in order else len(order), g[:3])


def _task_index(table: Table, task: str) -> int:
    names = [t.name for t in table.tasks]
    return names.index(task) if task in names else len(names)


def _pct_of(v, scale: float = 100.0) -> float | None:
    """A metric (a fraction) in percent; None stays None."""
    return None if v is None else scale * float(v)


def _num(v: float | None) -> str:
    return "" if v is None else format(v, ".4f")


def _mid(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def _spread(values: list[float | None], kind: str) -> list[str]:
    xs = [v for v in values if v is not None]
    if kind == "std":
        return [_num(statistics.stdev(xs)) if len(xs) > 1 else ""]
    return [_num(min(xs)) if xs else "", _num(max(xs)) if xs else ""]


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
    "±": r"$\pm$",
    "–": "--",
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
    """<stem>.md, .csv, .tex, .settings.csv, .seeds.csv, each written atomically."""
    out = []
    renders = (
        (".md", to_markdown),
        (".csv", to_csv),
        (".tex", to_latex),
        (".settings.csv", to_settings_csv),
        (".seeds.csv", to_seeds_csv),
    )
    for suffix, render in renders:
        path = stem.with_name(stem.name + suffix)
        write_text(path, render(table))
        out.append(path)
    return out
