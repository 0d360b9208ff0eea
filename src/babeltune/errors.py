"""User-facing errors: one line naming the file/key, the bad value and the fix; exit code 2."""

from __future__ import annotations

import errno
import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USAGE = 2
# A full disk or quota: reported as one line wherever the write happened (a checkpoint, a report, ...).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
            if not is_disk_full(exc):
                raise
            print(f"error: {write_failure(getattr(exc, 'filename', None) or 'output', exc)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota, also when a library reports it in its own exception (safetensors' SafetensorError
    says "No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL
    return any(f"(os error {code})" in str(exc) for code in DISK_FULL)


def write_failure(target: str | os.PathLike, exc: BaseException) -> str:
    """One line for a write that failed: the path, the system's reason and what to do about it."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    if is_disk_full(exc):
        fix = "free disk space or write somewhere else"
    elif isinstance(exc, (NotADirectoryError, FileExistsError)):
        fix = "a part of that path is a file, not a folder: choose another path"
    elif isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        fix = "the folder is not writable: choose another path or fix its permissions"
    else:
        fix = "choose another path"
    return f"{target}: cannot write ({reason}); {fix}"


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """Fail before any long work when ``path`` (a file, or a folder with ``folder=True``) cannot be written: a
    part of it is a file, or the nearest existing folder is not writable. Creates nothing."""
    target = Path(path).expanduser()
    if folder and target.exists() and not target.is_dir():
        raise BabeltuneError(f"{what} {target}: is a file, not a folder; choose another path")
    if not folder and target.is_dir():
        raise BabeltuneError(f"{what} {target}: is a folder; give a file name")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BabeltuneError(f"{what} {target}: {existing} is a file, so nothing can be created inside it; "
                             "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BabeltuneError(f"{what} {target}: {existing} is not writable; choose another path or fix its permissions")
    return target


def _write_data(handle, data: bytes) -> None:
    handle.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and rename it into place,
    so a crash or error never leaves a half-written file behind. A write that fails (full disk, a
    file where a folder should be, no permission) is a one-line BabeltuneError; the old file stays."""
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            _write_data(handle, data)
        os.replace(tmp, target)
    except OSError as exc:
        raise BabeltuneError(write_failure(target, exc)) from None
    finally:
        if tmp is not None:   # after a successful rename it is gone already
            Path(tmp).unlink(missing_ok=True)
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))
