"""Read a training corpus: a file or a folder of .txt / .jsonl / .csv / .tsv / .parquet files, streamed.

Nothing here holds more than one chunk (or one document) of a file in memory, so a corpus of any size can
be read. Files that are binary or not valid UTF-8 are reported with the byte offset of the first bad byte
and skipped — or stop everything with ``strict=True``. Documents are the non-empty, stripped texts.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from babeltune.advisor.types import SkippedFile
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
    strict: bool = False                # a bad file stops everything instead of being skipped

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.doc_split not in DOC_SPLITS:
            raise BabeltuneError(
                f"doc_split: unknown value {self.doc_split!r}; use one of {', '.join(DOC_SPLITS)}")


class FileProblem(Exception):
    """A file that cannot be read as UTF-8 text: why, and the byte offset of the first bad byte."""

    def __init__(self, reason: str, offset: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


# --------------------------------------------------------------------------- files


def corpus_files(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> list[Path]:
    """The corpus files in a deterministic (sorted, recursive) order. Hidden files and folders are
    ignored; files with other extensions are recorded in ``skipped`` with the reason."""
    root = Path(spec.path).expanduser()
    if not root.exists():
        raise BabeltuneError(f"corpus: {spec.path} does not exist; pass --corpus a file or folder of "
                             f"{'/'.join(SUPPORTED_SUFFIXES)} files")
    if root.is_file():
        if root.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise BabeltuneError(f"corpus: {root} has unsupported extension {root.suffix or '(none)'!r}; "
                                 f"rename it to one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [root]
    files, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (files if path.suffix.lower() in SUPPORTED_SUFFIXES else others).append(path)
    if skipped is not None:
        skipped.extend(SkippedFile(str(p), f"unsupported extension {p.suffix or '(none)'!r} "
                                            f"(supported: {', '.join(SUPPORTED_SUFFIXES)})") for p in others)
    if not files:
        raise BabeltuneError(f"corpus: {root} holds no {'/'.join(SUPPORTED_SUFFIXES)} files "
                             f"({len(others)} other files ignored); put UTF-8 text files there")
    return sorted(files)


def iter_text_chunks(path: Path, chunk_size: Optional[int] = None, *, start: int = 0,
                     end: Optional[int] = None) -> Iterator[tuple[int, bytes, str]]:
    """Yield ``(byte_offset, raw, text)`` pieces of a UTF-8 file, each ending just after a newline (but
    the last), so no line or character is ever cut in two. A leading BOM is dropped. ``start``/``end``
    read one byte range (which should begin at a line start); offsets stay file offsets.

    Raises FileProblem at the first NUL byte (binary file) or invalid UTF-8 sequence, with its offset."""
    chunk_size = chunk_size or CHUNK_BYTES
    with open(path, "rb") as handle:
        if start == 0 and handle.read(len(UTF8_BOM)) == UTF8_BOM:
            start = len(UTF8_BOM)      # a BOM is an encoding mark, not text
        handle.seek(start)
        offset, left = start, (None if end is None else end - start)
        pending: list[bytes] = []          # blocks read since the last newline
        checker = _BlockChecker(path)
        while True:
            block = handle.read(chunk_size if left is None else min(chunk_size, left))
            if left is not None:
                left -= len(block)
            if not block:
                if pending:
                    data = b"".join(pending)
                    yield offset, data, _decode_piece(data, offset)
                return
            newline = block.rfind(b"\n")
            if newline < 0:
                # No line end in this block: check it now, so a binary file without newlines fails fast
                # instead of being buffered whole.
                checker.check(block, offset + sum(map(len, pending)))
                pending.append(block)
                continue
            data = b"".join(pending + [block[: newline + 1]]) if pending else block[: newline + 1]
            rest = block[newline + 1:]
            text = _decode_piece(data, offset)
            checker.reset()
            if rest:        # the start of the next line: the checker must see it before what follows
                checker.check(rest, offset + len(data))
            pending = [rest] if rest else []
            yield offset, data, text
            offset += len(data)


class _BlockChecker:
    """Validates blocks that are buffered before their line ends (incremental UTF-8 decoding)."""

    def __init__(self, path: Path):
        self.path = path
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def reset(self) -> None:
        self.decoder.reset()

    def check(self, block: bytes, block_offset: int) -> None:
        nul = block.find(b"\x00")
        buffered = len(self.decoder.getstate()[0])
        try:
            self.decoder.decode(block)
        except UnicodeDecodeError as exc:
            at = block_offset - buffered + exc.start
            if nul < 0 or at < block_offset + nul:
                raise FileProblem(f"invalid UTF-8 at byte {at}", at) from None
        if nul >= 0:
            raise FileProblem(f"binary file (NUL byte at byte {block_offset + nul})", block_offset + nul)


def _decode_piece(data: bytes, offset: int) -> str:
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if 0 <= nul < exc.start:
            raise FileProblem(f"binary file (NUL byte at byte {offset + nul})", offset + nul) from None
        raise FileProblem(f"invalid UTF-8 at byte {offset + exc.start}", offset + exc.start) from None
    if nul >= 0:
        raise FileProblem(f"binary file (NUL byte at byte {offset + nul})", offset + nul)
    return text


def check_file(path: Path) -> Optional[SkippedFile]:
    """Read a whole file once and return why it cannot be used, or None when it is clean."""
    try:
        if path.suffix.lower() == ".parquet":
            _parquet_file(path)
            return None
        for _ in iter_text_chunks(path):
            pass
    except FileProblem as problem:
        return SkippedFile(str(path), problem.reason, problem.offset)
    except OSError as exc:
        return SkippedFile(str(path), f"unreadable: {exc.strerror or exc}")
    return None


def bad_file_error(skip: SkippedFile) -> BabeltuneError:
    where = f" (byte {skip.offset})" if skip.offset is not None and "byte" not in skip.reason else ""
    return BabeltuneError(f"corpus: {skip.path}: {skip.reason}{where}; fix: re-encode it as UTF-8 text "
                          f"(e.g. iconv -t UTF-8) or remove it, or drop --strict to skip it")


def usable_files(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[Path]:
    """Corpus files that passed the binary/UTF-8 check; the others go to ``skipped`` (or raise if strict)."""
    for path in corpus_files(spec, skipped):
        problem = check_file(path)
        if problem is None:
            yield path
        elif spec.strict:
            raise bad_file_error(problem)
        elif skipped is not None:
            skipped.append(problem)


def empty_corpus_error(spec: CorpusSpec, skipped: list[SkippedFile]) -> BabeltuneError:
    bad = [s for s in skipped if not s.reason.startswith("unsupported")]
    detail = f"; {len(bad)} file(s) skipped, first: {bad[0].path}: {bad[0].reason}" if bad else ""
    return BabeltuneError(f"corpus: {spec.path} contains no documents (no non-empty text found){detail}; "
                          f"fix: point --corpus at UTF-8 text (.txt one document per line, .jsonl with "
                          f"--text-field, .csv/.tsv/.parquet with --text-column)")


# --------------------------------------------------------------------------- documents


def iter_documents(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[str]:
    """Stream every non-empty, stripped document of the corpus, file by file.

    Raises BabeltuneError for a missing path, a bad file under ``strict``, or a corpus without documents."""
    skipped = [] if skipped is None else skipped
    count = 0
    for path in usable_files(spec, skipped):
        for doc in documents_in_file(path, spec):
            count += 1
            yield doc
    if count == 0:
        raise empty_corpus_error(spec, skipped)


def documents_in_file(path: Path, spec: CorpusSpec) -> Iterator[str]:
    """Documents of one (already checked) file."""
    if path.suffix.lower() == ".txt":
        yield from _txt_documents(path, spec.doc_split)
        return
    column, rows = _file_rows(path, spec)
    for row in rows:
        text = _row_text(row, column, path, spec).strip()
        if text:
            yield text


def _txt_documents(path: Path, doc_split: str) -> Iterator[str]:
    if doc_split == "file":
        text = "".join(piece for _, _, piece in iter_text_chunks(path)).strip()
        if text:
            yield text
        return
    paragraph: list[str] = []
    for _, _, piece in iter_text_chunks(path):
        for line in piece.split("\n"):
            stripped = line.strip()
            if doc_split == "line":
                if stripped:
                    yield stripped
            elif stripped:
                paragraph.append(line.rstrip())
            elif paragraph:
                yield "\n".join(paragraph).strip()
                paragraph = []
    if paragraph:
        yield "\n".join(paragraph).strip()


# --------------------------------------------------------------------------- records (jsonl / csv / parquet)


def iter_records(spec: CorpusSpec, skipped: Optional[list[SkippedFile]] = None) -> Iterator[dict]:
    """Stream rows as dicts: JSONL objects, CSV/TSV rows, parquet rows; a .txt document becomes
    ``{"text": document}``. For SFT data, where a row holds more than one field."""
    skipped = [] if skipped is None else skipped
    count = 0
    for path in usable_files(spec, skipped):
        if path.suffix.lower() == ".txt":
            rows: Iterator[dict] = ({"text": doc} for doc in _txt_documents(path, spec.doc_split))
        else:
            rows = _file_rows(path, spec)[1]
        for row in rows:
            count += 1
            yield row
    if count == 0:
        raise empty_corpus_error(spec, skipped)


def records_in_file(path: Path, spec: CorpusSpec) -> Iterator[dict]:
    """Rows of one (already checked) file, as iter_records yields them."""
    if path.suffix.lower() == ".txt":
        return ({"text": doc} for doc in _txt_documents(path, spec.doc_split))
    return _file_rows(path, spec)[1]


def _file_rows(path: Path, spec: CorpusSpec) -> tuple[Optional[str], Iterator[dict]]:
    """(text column or None for JSONL, rows) of one structured file; the column is checked up front."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return None, _jsonl_records(path)
    if suffix == ".parquet":
        parquet = _parquet_file(path)
        parquet.metadata_path = path
        return _choose_column(list(parquet.schema_arrow.names), spec, path), _parquet_rows(parquet)
    csv.field_size_limit(2**31 - 1)   # documents may be far longer than csv's 128 KiB default
    reader = csv.DictReader(_lines(path), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        columns = [c for c in reader.fieldnames or [] if c is not None]
    except csv.Error as exc:
        raise _csv_error(path, reader, exc) from None
    return _choose_column(columns, spec, path), _csv_rows(reader, path)


def _csv_rows(reader: csv.DictReader, path: Path) -> Iterator[dict]:
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, reader, exc) from None
        yield {k: v for k, v in row.items() if k is not None}


def _csv_error(path: Path, reader: csv.DictReader, exc: csv.Error) -> BabeltuneError:
    why = str(exc).split(" - ")[0]   # drop csv's hint about universal-newline mode: not the user's fix
    return BabeltuneError(f"corpus: {path} near line {max(1, reader.line_num)}: malformed "
                          f"{path.suffix.lstrip('.').upper()} ({why}); fix the quoting there "
                          f"(fields holding line breaks must be quoted)")


def _lines(path: Path) -> Iterator[str]:
    """Lines of a checked text file, newline kept (csv needs it for quoted multi-line fields)."""
    for _, _, piece in iter_text_chunks(path):
        parts = piece.split("\n")
        for part in parts[:-1]:
            yield part + "\n"
        if parts[-1]:
            yield parts[-1]


def _jsonl_records(path: Path) -> Iterator[dict]:
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BabeltuneError(f"corpus: {path} line {number}: invalid JSON ({exc.msg}); fix the line "
                                 f"or remove it (JSONL holds one JSON object per line)") from None
        if not isinstance(record, dict):
            raise BabeltuneError(f"corpus: {path} line {number}: a JSON {type(record).__name__}, not an "
                                 f"object; JSONL needs one object per line, e.g. {{\"text\": \"...\"}}")
        yield record


def _row_text(row: dict, column: Optional[str], path: Path, spec: CorpusSpec) -> str:
    """The document text of one row: the JSONL field (dots walk into objects) or the table column."""
    if column is None:
        key, option = spec.text_field, "--text-field"
        value, found = _lookup(row, key)
    else:
        key, option = column, "--text-column"
        value, found = row.get(column), True
    if not found:
        raise BabeltuneError(f"corpus: {path}: a record has no field {key!r} (fields: "
                             f"{', '.join(map(_shown, row)) or 'none'}); pass {option} naming the text field")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BabeltuneError(f"corpus: {path}: field {key!r} holds a {type(value).__name__}, not text; "
                             f"pass {option} naming a field that holds a string")
    return value


def _shown(name: object) -> str:
    """A field/column name for a one-line message: odd names (line breaks, quotes) are escaped."""
    text = str(name)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _lookup(record: dict, key: str) -> tuple[object, bool]:
    if key in record:
        return record[key], True
    value: object = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None, False
        value = value[part]
    return value, True


def _choose_column(columns: list[str], spec: CorpusSpec, path: Path) -> str:
    wanted = spec.text_column or "text"
    if wanted in columns:
        return wanted
    listed = ", ".join(map(_shown, columns)) or "none"
    if spec.text_column:
        raise BabeltuneError(f"corpus: {path} has no column {wanted!r} (columns: {listed}); "
                             f"pass --text-column with one of these")
    raise BabeltuneError(f"corpus: {path} has no 'text' column (columns: {listed}); "
                         f"pass --text-column naming the column that holds the text")


def _parquet_file(path: Path):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt/foreign file
        raise FileProblem(f"not a readable parquet file ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def _parquet_rows(parquet) -> Iterator[dict]:
    batches = parquet.iter_batches(batch_size=2048)   # streams row group by row group
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:   # data pages corrupt although the footer was readable
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise BabeltuneError(f"corpus: {parquet.metadata_path}: unreadable parquet data ({reason}); "
                                 f"fix: rewrite the file or remove it") from None
        yield from batch.to_pylist()


# --------------------------------------------------------------------------- identity


def corpus_sha256(spec: CorpusSpec) -> str:
    """SHA-256 over every corpus file's relative path, size and bytes (streamed), for run manifests."""
    root = Path(spec.path).expanduser()
    digest = hashlib.sha256()
    for path in corpus_files(spec):
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0".encode("utf-8"))
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
