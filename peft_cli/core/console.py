"""Consoles for what peftx prints. Off a terminal (SLURM logs, CI, pipes, files) nothing is wrapped
or cut: rich would otherwise assume 80 columns and fold a table's cells and paths over lines."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

UNWRAPPED = 100_000  # columns given to a console that writes to a file or a pipe


def console(stderr: bool = False) -> "Console":
    """A rich Console on stdout (or stderr): the terminal's width on a terminal; elsewhere as wide as
    any line needs, without colour codes."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=UNWRAPPED, soft_wrap=True, no_color=True)
