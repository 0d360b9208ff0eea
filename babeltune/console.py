"""Rich consoles for babeltune's tables. Off a terminal (logs, CI, a pipe) rich assumes 80 columns and cuts
cells with an ellipsis, so `3,541,207` turns into `3,5…`: there the console is wide instead (COLUMNS when
set, else 200), and numbers are never cut."""

from __future__ import annotations

import os

PIPE_WIDTH = 200   # columns assumed when output is not a terminal and COLUMNS is unset


def table_console(*, stderr: bool = False, file=None):
    """A rich Console for tables: the terminal's width on a terminal, COLUMNS or 200 columns otherwise."""
    from rich.console import Console

    console = Console(stderr=stderr, file=file)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(stderr=stderr, file=file, width=PIPE_WIDTH)
    return console
