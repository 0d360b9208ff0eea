"""One run per output directory, and never over an earlier run's files by accident.

RunLock: `train` holds an exclusive lock on ``output_dir/.babeltune.lock`` (``flock``, so the kernel drops it
when the holder dies, even by kill -9) for the whole run; the file names the holder (PID, host, start time).
A second process gets one error line naming the holder; a lock file left by a dead run is taken over, said.

check_output_dir: a fresh run (no --resume) refuses an output_dir that already holds files: checkpoints
(continue with --resume), or an earlier run's adapter/manifest/metrics (another --output-dir, or --overwrite
to remove babeltune's outputs of the earlier run first; files babeltune does not write are left alone).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

from babeltune.errors import BabeltuneError

LOCK_FILE = ".babeltune.lock"
# What a run writes into output_dir (and the temporary names of its atomic writes), for --overwrite.
RUN_OUTPUTS = ("checkpoint-*", "adapter", "merged", "manifest.json", "metrics.jsonl", "loss.png", "eval.json",
               "heldout.jsonl", ".*.staging-*", ".*.tmp", ".*.tmp.png")


def describe_holder(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}")


def pid_running(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                   # alive, another user's
    except (ValueError, TypeError):
        return False
    return True


class RunLock:
    """Exclusive use of an output directory by one process (a context manager)."""

    def __init__(self, output_dir: Path, echo: Callable[[str], Any] = print):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.echo = echo
        self.fd: Optional[int] = None
        self.created_dir = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def read_holder(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            holder = {"pid": "unreadable lock file"}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> "RunLock":
        import fcntl

        self.created_dir = not self.output_dir.exists()
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = self.read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise BabeltuneError(f"training.output_dir: {self.output_dir} is in use by another train process "
                                         f"({describe_holder(holder)}); wait for it to end, or pass another --output-dir") from None
                raise BabeltuneError(f"training.output_dir: cannot lock {self.path} ({exc.strerror}); "
                                     "use an output directory on a local file system") from None
            if self._still_linked(fd):
                break
            os.close(fd)   # the holder removed the file between our open and lock: lock the new one
        self._take_over(fd)
        return self

    def _open(self) -> int:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BabeltuneError(f"training.output_dir: cannot write the lock file {self.path} ({exc.strerror}); "
                                 "pass a writable --output-dir") from None

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _take_over(self, fd: int) -> None:
        previous = self.read_holder(fd)
        if previous:
            state = "no longer running" if (previous.get("host") == socket.gethostname()
                                            and not pid_running(previous.get("pid"))) else "no longer holding it"
            self.echo(f"lock: taking over the stale lock in {self.output_dir} ({describe_holder(previous)}, {state})")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)   # while still locked, so nobody locks the old file meanwhile
        os.close(self.fd)
        self.fd = None
        if self.created_dir:
            try:
                self.output_dir.rmdir()      # a run that failed before writing anything leaves no empty folder
            except OSError:
                pass


def earlier_files(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name != LOCK_FILE)


def is_run_output(path: Path) -> bool:
    return any(fnmatch.fnmatchcase(path.name, pattern) for pattern in RUN_OUTPUTS)


def names(paths: list[Path], limit: int = 4) -> str:
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def remove_earlier_outputs(output_dir: Path, echo: Callable[[str], Any]) -> None:
    """--overwrite: babeltune's outputs of the earlier run go; other files stay (and are named)."""
    found = earlier_files(output_dir)
    ours, foreign = [p for p in found if is_run_output(p)], [p for p in found if not is_run_output(p)]
    if ours:
        echo(f"--overwrite: removing the earlier run's {names(ours)} from {output_dir}")
    for path in sorted(ours, key=lambda p: not p.name.startswith("checkpoint-")):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if foreign:
        echo(f"--overwrite: leaving {names(foreign)} in {output_dir} (not written by babeltune)")


def check_output_dir(output_dir: Path, *, resuming: bool, overwrite: bool, echo: Callable[[str], Any]) -> None:
    """A fresh run starts in an empty (or new) output_dir; --overwrite empties it of an earlier run first."""
    if resuming:
        if overwrite:
            raise BabeltuneError("--overwrite and --resume exclude each other: --resume continues the run in "
                                 f"{output_dir}, --overwrite starts a new one there")
        return
    found = earlier_files(output_dir)
    if not found:
        return
    if overwrite:
        remove_earlier_outputs(output_dir, echo)
        return
    checkpoints = [p for p in found if fnmatch.fnmatchcase(p.name, "checkpoint-*")]
    if checkpoints:
        raise BabeltuneError(f"training.output_dir: {output_dir} already holds checkpoints from an earlier run "
                             f"({names(checkpoints)}); continue it with --resume, pass another --output-dir, or "
                             "start again there with --overwrite")
    raise BabeltuneError(f"training.output_dir: {output_dir} is not empty ({names(found)}) and holds no checkpoint "
                         "to resume from; pass another --output-dir, or --overwrite to replace an earlier run's outputs")
