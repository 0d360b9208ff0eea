"""User-facing errors: one line naming the file/key, the bad value and the fix; exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USAGE = 2


class BabeltuneError(Exception):
    """An error caused by the user's input, shown without a traceback as ``error: <line>``.

    Each argument is one line (``BabeltuneError(*problems)`` for one ``key: message`` line per config
    error). A line never breaks: a newline or other control character inside it (from a file name or
    a value the user typed) is shown escaped, so user input cannot forge an extra ``error:`` line.
    """

    exit_code = EXIT_USAGE

    def __init__(self, *lines: object):
        self.lines = [str(line) for line in lines] or ["error"]
        super().__init__("\n".join(self.lines))


def one_line(text: str) -> str:
    """Escape characters that would break or hide a one-line message (control characters, and the
    separators str.splitlines() splits on, such as \\n, \\x1e or \\u2028), as repr() writes them."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def print_error(line: str, file=None) -> None:
    """One ``error: ...`` line on stderr, escaped with :func:`one_line`."""
    print(f"error: {one_line(line)}", file=file or sys.stderr)


def fail(message: str) -> "BabeltuneError":
    """Return a BabeltuneError (use as ``raise fail(...)``)."""
    return BabeltuneError(message)


def handle_errors(func: F) -> F:
    """Decorate a click command: BabeltuneError -> 'error: ...' on stderr and exit 2, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except BabeltuneError as exc:
            for line in getattr(exc, "lines", None) or [str(exc)]:
                print_error(line)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as exc:
            from babeltune.atomic import is_disk_full, write_failure   # atomic imports this module

            if not is_disk_full(exc):
                raise
            print(f"error: {write_failure(getattr(exc, 'filename', None) or 'output', exc)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]
