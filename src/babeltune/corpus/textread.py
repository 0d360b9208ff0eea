"""Reading UTF-8 text files in bounded memory: regular files only, bad lines skipped and counted, long
lines cut (or skipped), every step linear in the file size.

``TextStream`` turns a binary file handle into pieces ``(byte_offset, raw, text)``. A piece ends just
after a newline, except at a cut of an over-long line and at the end of the file, so consumers that
split pieces on "\\n" see every line whole, and a cut piece as a line of its own.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from typing import BinaryIO, Iterator, Optional

from babeltune.corpus.readlog import FileProblem, ReadTally, cut_point

SNIFF_BYTES = 8000          # a NUL byte this early marks a binary file (the heuristic git and grep use)
REENCODE = "re-encode it as UTF-8 text (e.g. iconv -t UTF-8) or remove it"


def os_reason(exc: OSError, path: str) -> str:
    """Why ``path`` cannot be opened, in words: a dangling link, a symbolic link loop, permission, ..."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling symbolic link (to {os.readlink(path)!r}, which does not exist)"
    return f"unreadable: {exc.strerror or exc}"


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file. Opened non-blocking and checked with fstat,
    so a FIFO (or a file swapped for one) never blocks the reader; raises FileProblem with the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FileProblem(os_reason(exc, str(path))) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem(f"{file_kind(mode)}, not a regular file", fix="read regular files only; remove it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def first_problem(data: bytes, offset: int) -> Optional[tuple[str, int]]:
    """(reason, file offset) of the first NUL byte or invalid UTF-8 sequence in ``data``, or None."""
    nul = data.find(b"\x00")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if nul < 0 or exc.start < nul:
            return "invalid UTF-8", offset + exc.start
    return ("NUL byte", offset + nul) if nul >= 0 else None


class _BlockChecker:
    """Validates the blocks of a line that is buffered before its end (incremental UTF-8 decoding)."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def reset(self) -> None:
        self.decoder.reset()

    def check(self, block: bytes, block_offset: int) -> Optional[tuple[str, int]]:
        nul = block.find(b"\x00")
        buffered = len(self.decoder.getstate()[0])
        try:
            self.decoder.decode(block)
        except UnicodeDecodeError as exc:
            at = block_offset - buffered + exc.start
            if nul < 0 or at < block_offset + nul:
                return "invalid UTF-8", at
        return ("NUL byte", block_offset + nul) if nul >= 0 else None


def has_long_line(data: bytes, limit: int) -> bool:
    """Whether a line of ``data`` (which starts at a line start) holds more than ``limit`` bytes. Jumps
    from the last newline of one window to the next, so it costs about len(data) / limit searches."""
    position = 0
    while len(data) - position > limit:
        newline = data.rfind(b"\n", position, position + limit + 1)
        if newline < 0:
            return True
        position = newline + 1
    return False


def split_lines(data: bytes) -> Iterator[bytes]:
    """Lines of ``data``, each with its "\\n" (only "\\n" ends a line, as in the rest of the reader)."""
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start)
        end = len(data) if newline < 0 else newline + 1
        yield data[start:end]
        start = end


class TextStream:
    """The pieces of one byte range of a file; see the module docstring.

    ``too_long``: "cut" cuts a line longer than ``limit`` bytes into pieces (at a space where possible),
    each kept or skipped on its own; "split" does the same for a caller that joins the pieces again (and
    counts its own cuts); "skip" skips such a line whole, streaming past it. A line (or piece) with a NUL
    byte or invalid UTF-8 is skipped, an empty line taking its place so line numbers stay, and counted
    in ``tally``; under ``tally.strict`` it raises FileProblem at its first bad byte."""

    def __init__(self, handle: BinaryIO, tally: ReadTally, *, chunk_size: int, limit: int, too_long: str,
                 offset: int, end: Optional[int]):
        self.handle, self.tally, self.chunk_size, self.limit = handle, tally, chunk_size, limit
        self.too_long = too_long
        self.offset = offset              # file offset of the next byte to hand out (or to discard)
        self.left = None if end is None else end - offset
        self.line = 1                     # line number, counted from the range start, at self.offset
        self.cuts = 0                     # cuts made in the current line
        # A line is checked while it is buffered only where that ends it early: under strict (fail at the
        # first bad byte) and for "skip" (drop a bad line without buffering it). Cut lines are checked
        # piece by piece as the pieces are handed out: their buffer is bounded anyway.
        self.checker = _BlockChecker() if tally.strict or too_long == "skip" else None
        self.pending: list[bytes] = []    # bytes of the current line read but not handed out yet
        self.pending_size = 0
        self.discarding: Optional[dict] = None   # the line being skipped: reason, line, offset, bytes

    def _read(self) -> bytes:
        size = self.chunk_size if self.left is None else min(self.chunk_size, self.left)
        block = self.handle.read(size) if size > 0 else b""
        if self.left is not None:
            self.left -= len(block)
        return block

    def pieces(self) -> Iterator[tuple[int, bytes, str]]:
        while True:
            block = self._read()
            if not block:
                break
            if self.discarding is not None:
                block, ended = self._discard(block)
                if ended:
                    yield self.offset - 1, b"\n", "\n"     # the skipped line's place
                if not block:
                    continue
            newline = block.rfind(b"\n")
            if newline >= 0:
                head = block[:newline + 1]
                data = b"".join(self.pending) + head if self.pending else head
                self.pending, self.pending_size = [], 0
                if self.checker is not None:
                    self.checker.reset()
                yield from self._complete(data)
                block = block[newline + 1:]
            if block:
                yield from self._grow(block)
        if self.discarding is not None:
            self._end_discard(0)
        elif self.pending:
            data, self.pending, self.pending_size = b"".join(self.pending), [], 0
            yield from self._complete(data)
        self._end_line()
        self.tally.lines += self.line - 1

    # ----------------------------------------------------------------- a line without its end yet

    def _grow(self, block: bytes) -> Iterator[tuple[int, bytes, str]]:
        """Buffer the start of a line, cut or skipped as soon as it is longer than the limit, so the buffer
        stays bounded (a binary file without newlines fails fast under strict)."""
        problem = self.checker.check(block, self.offset + self.pending_size) if self.checker else None
        if problem is not None:
            self._start_discard(problem, self.pending_size + len(block))
            return
        self.pending.append(block)
        self.pending_size += len(block)
        if self.pending_size <= self.limit:
            return
        buffer = b"".join(self.pending)
        if self.too_long == "skip":
            self._start_discard((f"line longer than {self.limit:,} bytes", self.offset), len(buffer))
            return
        start = 0
        while len(buffer) - start > self.limit:
            at = cut_point(buffer, self.limit, start)
            yield from self._piece(buffer[start:at], self.offset)
            self.offset += at - start
            self.cuts += 1
            start = at
        self.pending, self.pending_size = [buffer[start:]], len(buffer) - start

    def _piece(self, raw: bytes, offset: int) -> Iterator[tuple[int, bytes, str]]:
        """Hand out one cut piece of a long line, or skip it (counted) when it holds a bad byte."""
        problem = first_problem(raw, offset)
        if problem is None:
            yield offset, raw, raw.decode("utf-8")
            return
        self._check_strict(problem)
        self.tally.skip(f"{problem[0]} in a piece of a line longer than {self.limit:,} bytes", unit="piece",
                        line=self.line, offset=problem[1], nbytes=len(raw))

    def _start_discard(self, problem: tuple[str, int], size: int) -> None:
        self._check_strict(problem)
        self.discarding = {"reason": problem[0], "line": self.line, "offset": problem[1], "bytes": size}
        self.pending, self.pending_size = [], 0
        self.checker.reset()

    def _discard(self, block: bytes) -> tuple[bytes, bool]:
        """Drop the skipped line's bytes up to its newline: (what follows it in ``block``, whether it ended)."""
        newline = block.find(b"\n")
        if newline < 0:
            self.discarding["bytes"] += len(block)
            return b"", False
        self._end_discard(newline + 1)
        return block[newline + 1:], True

    def _end_discard(self, tail: int) -> None:
        skip, self.discarding = self.discarding, None
        size = skip["bytes"] + tail
        self.tally.skip(skip["reason"], line=skip["line"], offset=skip["offset"], nbytes=size - (tail > 0))
        self.offset += size
        if tail:
            self.line += 1
            self._end_line()

    def _end_line(self) -> None:
        if self.too_long == "cut":      # "split": the caller joins the pieces again and counts its own cuts
            self.tally.cut(self.cuts)
        self.cuts = 0

    def _check_strict(self, problem: tuple[str, int]) -> None:
        if not self.tally.strict:
            return
        reason, at = problem
        if reason == "invalid UTF-8":
            raise FileProblem(f"invalid UTF-8 at byte {at}", at, REENCODE)
        if reason == "NUL byte":
            raise FileProblem(f"binary file (NUL byte at byte {at})", at, REENCODE)
        raise FileProblem(f"{reason} at byte {at}", at, "split that line or remove it")

    # ----------------------------------------------------------------- whole lines

    def _complete(self, data: bytes) -> Iterator[tuple[int, bytes, str]]:
        """Hand out ``data`` (whole lines, the first possibly the rest of a cut line): in one piece when
        it is clean, else line by line, bad lines dropped and long ones cut or skipped."""
        text = None
        if b"\x00" not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if text is None or has_long_line(data, self.limit):
            yield from self._line_by_line(data)
            return
        yield self.offset, data, text
        self.offset += len(data)
        newlines = data.count(b"\n")
        if newlines:
            self._end_line()
            self.line += newlines

    def _line_by_line(self, data: bytes) -> Iterator[tuple[int, bytes, str]]:
        run: list[bytes] = []              # clean lines not handed out yet
        run_offset = self.offset
        for line in split_lines(data):
            body = line[:-1] if line.endswith(b"\n") else line
            if len(body) > self.limit and self.too_long != "skip":
                if run:
                    joined, run = b"".join(run), []
                    yield run_offset, joined, joined.decode("utf-8")
                start = 0
                while len(body) - start > self.limit:
                    at = cut_point(body, self.limit, start)
                    yield from self._piece(body[start:at], self.offset + start)
                    self.cuts += 1
                    start = at
                self.offset += start
                line, body = line[start:], body[start:]
            problem = first_problem(body, self.offset)
            if problem is None and len(body) > self.limit:
                problem = (f"line longer than {self.limit:,} bytes", self.offset)
            if problem is not None:
                self._check_strict(problem)
                reason, unit = problem[0], "line"
                if self.cuts:                          # the last piece of a cut line
                    reason, unit = f"{reason} in a piece of a line longer than {self.limit:,} bytes", "piece"
                self.tally.skip(reason, unit=unit, line=self.line, offset=problem[1], nbytes=len(body))
                self.offset += len(body)
                line = line[len(body):]                # an empty line takes its place
            if not run:
                run_offset = self.offset
            run.append(line)
            self.offset += len(line)
            if line.endswith(b"\n"):
                self.line += 1
                self._end_line()
        if run:
            joined = b"".join(run)
            yield run_offset, joined, joined.decode("utf-8")
