"""Writing files and folders so that nothing is ever half-written: a temporary file in the same folder renamed
into place, a check that a path can be written before long work starts, and one line (path, reason, fix) for a
write that failed (full disk, no permission, a file where a folder should be)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from babeltune.errors import BabeltuneError

# A full disk or quota: reported as one line wherever the write happened (a checkpoint, a report, ...).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
