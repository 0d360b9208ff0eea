"""Rich consoles for babeltune's tables. Off a terminal (logs, CI, a pipe) rich assumes 80 columns and cuts
cells with an ellipsis, so `3,541,207` turns into `3,5…`: there the console is wide instead (COLUMNS when
set, else 200), and numbers are never cut."""

from __future__ import annotations

import os
from contextlib import contextmanager

PIPE_WIDTH = 200   # columns assumed when output is not a terminal and COLUMNS is unset


def table_console(*, stderr: bool = False, file=None):
    """A rich Console for tables: the terminal's width on a terminal, COLUMNS or 200 columns otherwise."""
    from rich.console import Console

    console = Console(stderr=stderr, file=file)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(stderr=stderr, file=file, width=PIPE_WIDTH)
    return console


class CountProgress:
    """Counts work done out of a known total: a rich bar on a terminal, else a plain line at every 10%
    (logs and CI get a heartbeat instead of minutes of silence). Use as a context manager; call advance(n)."""

    def __init__(self, description: str, total: int, *, file=None, echo=None):
        from rich.console import Console

        self.description, self.total, self.done = description, max(int(total), 0), 0
        self.console = Console(stderr=file is None, file=file)
        self.echo = echo or (lambda line: self.console.print(line, markup=False, highlight=False))
        self.bar = self.task = None
        self.next_line_at = 0

    def __enter__(self) -> "CountProgress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        self.next_line_at = max(1, self.total // 10)
        return self

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.done >= self.next_line_at or self.done == self.total:
            self.echo(f"{self.description}: {self.done:,}/{self.total:,}")
            self.next_line_at = self.done + max(1, self.total // 10)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def quiet_libraries():
    """For the length of one babeltune command: no transformers/hub tqdm bars ("Loading weights") between
    our rich bars, transformers' logger at errors only, and no FutureWarnings (library deprecation notes
    addressed to developers, not to someone training an adapter). Everything is restored afterwards."""
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    verbosity, bars_on = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_on:
            hf_logging.enable_progress_bar()
        if not hub_bars_off:
            enable_progress_bars()
