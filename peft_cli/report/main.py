"""`peftx report`: the paper-style table (methods x GLUE tasks) from completed result.json files.

Reads only results/runs/<report.runs>/result.json and conf/ (task metadata, reference rows); writes
results/tables/<experiment>.{md,csv,tex,settings.csv,seeds.csv,png,pdf} (build.py says what every number is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_cli.core.errors import UserError
from peft_cli.report.build import build_table, collect, report_config
from peft_cli.report.plot import write_plot
from peft_cli.report.reference import load_references
from peft_cli.report.render import write_tables
from peft_cli.report.table import SKIPPED


def report_from_config(cfg: dict[str, Any], show: bool = False) -> list[Path]:
    """Composed config dict -> files under <results.dir>/tables/ (md, csv, tex, png, pdf).
    `show` prints the table to the console (the CLI's choice; the library is quiet)."""
    rc = report_config(cfg)
    refs = load_references(rc.report.references)
    runs, counts = collect(rc.results.dir, rc.pattern)
    if not runs and not refs:
        skipped = ", ".join(f"{counts[s]} {s}" for s in SKIPPED)
        raise UserError(
            f"no completed result.json under {Path(rc.results.dir) / 'runs' / rc.pattern} ({skipped}); "
            "check experiment=, results.dir= or report.runs="
        )
    table = build_table(rc.experiment, runs, counts, refs, options=rc.report)
    stem = rc.tables_dir / rc.stem
    paths = write_tables(table, stem) + write_plot(table, stem)
    if show:
        from peft_cli.report.render import print_table

        print_table(table)
    return paths
