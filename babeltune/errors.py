"""User-facing errors: one line naming the file/key, the bad value and the fix; exit code 2."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
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

    return wrapper  # type: ignore[return-value]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and rename it into place,
    so a crash or error never leaves a half-written file behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
