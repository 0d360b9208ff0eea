"""Read a training corpus: a file or a folder of .txt / .jsonl / .csv / .tsv / .parquet files, streamed.

Nothing here holds more than one chunk (or one bounded document) of a file in memory, so a corpus of any
size and shape can be read: lines longer than MAX_DOCUMENT_BYTES are cut into pieces, JSONL/CSV lines
longer than MAX_RECORD_BYTES are skipped, and splitting is linear. Nothing is lost in silence: entries
that are not regular files (FIFOs, dangling links, link loops) and binary or unreadable files are skipped
and reported; lines with undecodable bytes and malformed CSV rows are skipped and counted per file; cut
documents are counted (see readlog). ``strict=True`` turns every skip into an error instead.
Documents are the non-empty, stripped texts.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from babeltune.corpus import records
from babeltune.corpus import readlog
from babeltune.corpus.readlog import FileProblem, ReadTally, cut_point, cut_text
from babeltune.corpus.textread import REENCODE, SNIFF_BYTES, TextStream, file_kind, open_regular, os_reason
from babeltune.corpus.skipped import SkippedFile
from babeltune.errors import BabeltuneError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + (".parquet",)
DOC_SPLITS = ("line", "paragraph", "file")
CHUNK_BYTES = 8 << 20          # read size: large enough to amortise Python overhead, small enough for RAM
UTF8_BOM = codecs.BOM_UTF8


@dataclass
class CorpusSpec:
    """Where the corpus is and how to cut it into documents."""

    path: str
    doc_split: str = "line"             # .txt only: "line" | "paragraph" (blank-line separated) | "file"
    text_field: str = "text"            # .jsonl: the field holding the text (dots walk into nested objects)
    text_column: Optional[str] = None   # .csv/.tsv/.parquet: the column; default "text" when it exists
    strict: bool = False                # anything skipped (file, line, row) stops everything instead

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.doc_split not in DOC_SPLITS:
            raise BabeltuneError(
                f"doc_split: unknown value {self.doc_split!r}; use one of {', '.join(DOC_SPLITS)}")


# --------------------------------------------------------------------------- files


def corpus_files(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> list[Path]:
    """The corpus files in a deterministic (sorted, recursive) order. Hidden files and folders are
    ignored; symbolic links are followed, each folder read once. Entries that cannot be corpus files
    (other extensions, FIFOs and other non-regular files, dangling links, link loops) are recorded in
    ``skipped`` with the reason."""
    root = Path(spec.path).expanduser()
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        if not os.path.lexists(root):
            raise BabeltuneError(f"corpus: {spec.path} does not exist; pass --corpus a file or folder of "
                                 f"{'/'.join(SUPPORTED_SUFFIXES)} files") from None
        raise BabeltuneError(f"corpus: {root}: {os_reason(exc, str(root))}; pass --corpus a readable file "
                             f"or folder") from None
    if stat.S_ISREG(mode):
        if root.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise BabeltuneError(f"corpus: {root} has unsupported extension {root.suffix or '(none)'!r}; "
                                 f"rename it to one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [root]
    if not stat.S_ISDIR(mode):
        raise BabeltuneError(f"corpus: {root} is {file_kind(mode)}, not a regular file or folder; pass --corpus "
                             f"a file or folder of {'/'.join(SUPPORTED_SUFFIXES)} files")
    report: list[SkippedFile] = []
    files, others = _walk(root, report)
    if skipped is not None:
        skipped.extend(report)
        skipped.extend(SkippedFile(str(p), f"unsupported extension {p.suffix or '(none)'!r} "
                                            f"(supported: {', '.join(SUPPORTED_SUFFIXES)})") for p in others)
    if not files:
        raise BabeltuneError(f"corpus: {root} holds no {'/'.join(SUPPORTED_SUFFIXES)} files "
                             f"({len(others) + len(report)} other entries ignored); put UTF-8 text files there")
    return sorted(files)


def _walk(root: Path, report: list[SkippedFile]) -> tuple[list[Path], list[Path]]:
    """(corpus files, files with other extensions) under ``root``; what cannot be read goes to ``report``.
    An explicit stack, not recursion: a deep tree cannot exhaust Python's recursion limit."""
    files, others, seen, stack = [], [], set(), [root]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                report.append(SkippedFile(str(folder), "folder already read through another path "
                                                       "(a symbolic link loop or a second link to it)"))
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            report.append(SkippedFile(str(folder), f"folder {os_reason(exc, str(folder))}"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                report.append(SkippedFile(str(path), os_reason(exc, str(path))))
                continue
            if stat.S_ISDIR(mode):
                subfolders.append(path)
            elif not stat.S_ISREG(mode):
                report.append(SkippedFile(str(path), f"{file_kind(mode)}, not a regular file"))
            else:
                (files if path.suffix.lower() in SUPPORTED_SUFFIXES else others).append(path)
        stack.extend(reversed(subfolders))
    return files, others


def iter_text_chunks(path: Path, chunk_size: Optional[int] = None, *, start: int = 0, end: Optional[int] = None,
                     tally: Optional[ReadTally] = None, too_long: str = "cut") -> Iterator[tuple[int, bytes, str]]:
    """Yield ``(byte_offset, raw, text)`` pieces of a UTF-8 file, each ending just after a newline except
    at the end of the file and where an over-long line is cut, so no character is ever cut in two. A
    leading BOM is dropped. ``start``/``end`` read one byte range (which should begin at a line start).

    Without ``tally`` (or with a strict one) the first NUL byte or invalid UTF-8 sequence raises
    FileProblem with its offset. With a lenient tally a NUL byte in the first SNIFF_BYTES raises
    FileProblem (a binary file) and later bad lines are skipped and counted. ``too_long``: "cut" lines
    longer than MAX_DOCUMENT_BYTES into counted pieces, "split" them without counting (the caller joins
    them again), or "skip" lines longer than MAX_RECORD_BYTES."""
    tally = ReadTally(strict=True) if tally is None else tally
    limit = readlog.MAX_RECORD_BYTES if too_long == "skip" else readlog.MAX_DOCUMENT_BYTES
    with open_regular(str(path)) as handle:
        if start == 0:
            head = handle.read(SNIFF_BYTES)
            nul = head.find(b"\x00")
            if nul >= 0 and not tally.strict:
                raise FileProblem(f"binary file (NUL byte at byte {nul})", nul, REENCODE)
            start = len(UTF8_BOM) if head.startswith(UTF8_BOM) else 0
        handle.seek(start)
        yield from TextStream(handle, tally, chunk_size=chunk_size or CHUNK_BYTES, limit=limit,
                              too_long=too_long, offset=start, end=end).pieces()


def check_file(path: Path) -> Optional[SkippedFile]:
    """Why the file cannot be read at all (not a regular file, unreadable, binary, not parquet), or None.
    Only its start is read: bad lines further in are skipped and counted while reading."""
    try:
        if path.suffix.lower() == ".parquet":
            records.parquet_columns(path)
            return None
        with open_regular(str(path)) as handle:
            head = handle.read(SNIFF_BYTES)
    except FileProblem as problem:
        return SkippedFile(str(path), problem.reason, problem.offset)
    except OSError as exc:
        return SkippedFile(str(path), f"unreadable: {exc.strerror or exc}")
    nul = head.find(b"\x00")
    return SkippedFile(str(path), f"binary file (NUL byte at byte {nul})", nul) if nul >= 0 else None


def bad_file_error(skip: SkippedFile, fix: Optional[str] = None) -> BabeltuneError:
    where = f" (byte {skip.offset})" if skip.offset is not None and "byte" not in skip.reason else ""
    fix = fix or (REENCODE if "UTF-8" in skip.reason or "binary" in skip.reason else "fix it or remove it")
    return BabeltuneError(f"corpus: {skip.path}: {skip.reason}{where}; fix: {fix}, or drop --strict to skip it")


def usable_files(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[Path]:
    """Corpus files that can be opened and are not binary; the others go to ``skipped`` (or raise if strict)."""
    listed: list[SkippedFile] = []
    files = corpus_files(spec, listed)
    if skipped is not None:
        skipped.extend(listed)
    check_listing(spec, listed)
    for path in files:
        problem = check_file(path)
        if problem is None:
            yield path
        elif spec.strict:
            raise bad_file_error(problem)
        elif skipped is not None:
            skipped.append(problem)


def check_listing(spec: CorpusSpec, listed: list[SkippedFile]) -> None:
    """Under strict, an entry of the corpus folder that cannot be read (a FIFO, a dangling link, a link
    loop) is an error; files with other extensions are only reported, as always."""
    unreadable = [s for s in listed if not s.reason.startswith("unsupported extension")]
    if spec.strict and unreadable:
        raise bad_file_error(unreadable[0], "remove it from the corpus folder")


def empty_corpus_error(spec: CorpusSpec, skipped: list[SkippedFile]) -> BabeltuneError:
    bad = [s for s in skipped if not s.reason.startswith("unsupported") and s.kind != "cut"]
    first = (f"{bad[0].path}: {bad[0].reason}" if bad[0].kind == "file" else bad[0].describe()) if bad else ""
    what = "file(s)" if all(s.kind == "file" for s in bad) else "file(s) or records"
    detail = f"; {len(bad)} {what} skipped, first: {first}" if bad else ""
    return BabeltuneError(f"corpus: {spec.path} contains no documents (no non-empty text found){detail}; "
                          f"fix: point --corpus at UTF-8 text (.txt one document per line, .jsonl with "
                          f"--text-field, .csv/.tsv/.parquet with --text-column)")


def _guarded(items: Iterator, path: Path, spec: CorpusSpec, tally: ReadTally,
             skipped: list[SkippedFile]) -> Iterator:
    """Drain one file's reader: a FileProblem (under strict, or a file failing midway) becomes the error
    or a reported skip, and at the file's end what the tally counted is reported."""
    read = 0
    try:
        for item in items:
            read += 1
            yield item
    except (FileProblem, OSError) as exc:
        problem = exc if isinstance(exc, FileProblem) else FileProblem(f"read error: {exc.strerror or exc}")
        if spec.strict:
            raise bad_file_error(SkippedFile(str(path), problem.reason, problem.offset), problem.fix) from None
        after = f" after {read:,} documents or records were read" if read else ""
        skipped.append(SkippedFile(str(path), problem.reason + after, problem.offset))
    skipped.extend(tally.entries(str(path)))


# --------------------------------------------------------------------------- documents


def iter_documents(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[str]:
    """Stream every non-empty, stripped document of the corpus, file by file. What is skipped or cut goes
    to ``skipped`` (one entry per file and reason).

    Raises BabeltuneError for a missing path, anything skipped under ``strict``, or a corpus without documents."""
    return _stream(spec, skipped, documents_in_file)


def documents_in_file(path: Path, spec: CorpusSpec, tally: Optional[ReadTally] = None) -> Iterator[str]:
    """Documents of one file; skipped lines/rows and cut documents are counted in ``tally``."""
    tally = ReadTally(strict=spec.strict) if tally is None else tally
    if path.suffix.lower() == ".txt":
        yield from _txt_documents(path, spec.doc_split, tally)
        return
    column, rows = _file_rows(path, spec, tally, text_only=True)
    for row in rows:
        text = records.row_text(row, column, path, spec).strip()
        if column is None and not records.encodable(text):
            tally.skip("text holding an unpaired surrogate escape such as \\ud800 (not Unicode text)", unit="record")
            continue
        for piece in cut_text(text, tally, readlog.MAX_DOCUMENT_BYTES):
            piece = piece.strip()
            if piece:
                yield piece


def _txt_documents(path: Path, doc_split: str, tally: ReadTally) -> Iterator[str]:
    if doc_split != "line":
        yield from _joined_documents(iter_text_chunks(path, tally=tally, too_long="split"), doc_split, tally)
        return
    for _, _, piece in iter_text_chunks(path, tally=tally):
        for line in piece.split("\n"):
            stripped = line.strip()
            if stripped:
                yield stripped


class _DocumentBuilder:
    """One document assembled from lines, handed out in pieces of at most ``limit`` bytes as it grows,
    so a paragraph or file of any size is held in bounded memory; cuts go to the tally."""

    def __init__(self, limit: int, tally: ReadTally):
        self.limit, self.tally = limit, tally
        self.parts: list[str] = []
        self.chars = 0
        self.cuts = 0

    def add(self, text: str, separator: str = "") -> None:
        if separator and self.parts:
            self.parts.append(separator)
        self.parts.append(text)
        self.chars += len(text) + len(separator)

    def full_pieces(self) -> Iterator[str]:
        """Pieces ready once the document is well over the limit (at least a limit's worth between two
        cuts, so the work stays linear)."""
        if self.chars > 2 * self.limit:
            yield from self._cut(keep_rest=True)

    def finish(self) -> Iterator[str]:
        yield from self._cut(keep_rest=False)
        self.tally.cut(self.cuts)
        self.parts, self.chars, self.cuts = [], 0, 0

    def _cut(self, keep_rest: bool) -> Iterator[str]:
        text = "".join(self.parts)
        raw = text.encode("utf-8") if len(text) * 4 > self.limit else None
        start = 0
        while raw is not None and len(raw) - start > self.limit:
            at = cut_point(raw, self.limit, start)
            piece = raw[start:at].decode("utf-8").strip()
            if piece:
                yield piece
            start, self.cuts = at, self.cuts + 1
        rest = raw[start:].decode("utf-8") if raw is not None and start else text
        if keep_rest:
            self.parts, self.chars = [rest], len(rest)
        elif rest.strip():
            yield rest.strip()


def _joined_documents(pieces: Iterator[tuple[int, bytes, str]], doc_split: str, tally: ReadTally) -> Iterator[str]:
    """Paragraphs (blank-line separated, lines right-stripped) or whole files as documents. A piece that
    ends inside a line (a long line split by the reader) is continued by the next one, not broken."""
    document = _DocumentBuilder(readlog.MAX_DOCUMENT_BYTES, tally)
    continuing = False
    for _, _, piece in pieces:
        if doc_split == "file":
            document.add(piece)
            yield from document.full_pieces()
            continue
        lines = piece.split("\n")
        closed = piece.endswith("\n")
        if closed:
            lines.pop()
        for index, line in enumerate(lines):
            last_open = index == len(lines) - 1 and not closed
            text = line if last_open else line.rstrip()
            if index == 0 and continuing:
                document.add(text)
            elif line.strip() or last_open:
                document.add(text, separator="\n")
            else:
                yield from document.finish()
        continuing = not closed
        yield from document.full_pieces()
    yield from document.finish()


# --------------------------------------------------------------------------- records (jsonl / csv / parquet)


def iter_records(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[dict]:
    """Stream rows as dicts: JSONL objects, CSV/TSV rows, parquet rows; a .txt document becomes
    ``{"text": document}``. For SFT data, where a row holds more than one field."""
    return _stream(spec, skipped, _rows_in_file)


def _stream(spec: CorpusSpec, skipped: Optional[list[SkippedFile]], items_in_file) -> Iterator:
    """``items_in_file(path, spec, tally)`` over every usable file, guarded and tallied; an empty corpus is an error."""
    skipped = [] if skipped is None else skipped
    count = 0
    for path in usable_files(spec, skipped):
        tally = ReadTally(strict=spec.strict)
        for item in _guarded(items_in_file(path, spec, tally), path, spec, tally, skipped):
            count += 1
            yield item
    if count == 0:
        raise empty_corpus_error(spec, skipped)


def records_in_file(path: Path, spec: CorpusSpec, tally: Optional[ReadTally] = None) -> Iterator[dict]:
    """Rows of one (already checked) file, as iter_records yields them."""
    return _rows_in_file(path, spec, tally if tally is not None else ReadTally(strict=spec.strict))


def _rows_in_file(path: Path, spec: CorpusSpec, tally: ReadTally) -> Iterator[dict]:
    if path.suffix.lower() == ".txt":
        yield from ({"text": doc} for doc in _txt_documents(path, spec.doc_split, tally))
    else:
        yield from _file_rows(path, spec, tally)[1]


def _file_rows(path: Path, spec: CorpusSpec, tally: ReadTally,
               text_only: bool = False) -> tuple[Optional[str], Iterator[dict]]:
    """(text column or None for JSONL, rows) of one structured file; the column is checked up front.
    ``text_only`` reads only the text column of a parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        column = records.choose_column(records.parquet_columns(path), spec, path)
        return column, records.parquet_rows(path, tally, [column] if text_only else None)
    lines = records.lines_of(iter_text_chunks(path, tally=tally, too_long="skip"))
    if suffix == ".jsonl":
        return None, records.jsonl_records(lines, path, tally)
    return records.csv_table(lines, path, spec, tally)


# --------------------------------------------------------------------------- identity


def corpus_sha256(spec: CorpusSpec) -> str:
    """SHA-256 over every corpus file's relative path, size and bytes (streamed), for run manifests."""
    root = Path(spec.path).expanduser()
    digest = hashlib.sha256()
    for path in corpus_files(spec):
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            with open_regular(str(path)) as handle:
                digest.update(os.fsencode(name) + f"\0{os.fstat(handle.fileno()).st_size}\0".encode())
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except (FileProblem, OSError) as problem:
            digest.update(os.fsencode(name) + f"\0unreadable: {problem}\0".encode("utf-8", "replace"))
    return digest.hexdigest()
