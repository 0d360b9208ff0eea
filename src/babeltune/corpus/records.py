"""Structured corpus files, streamed: JSONL objects, CSV/TSV rows, parquet rows, and the text field of
each. Malformed CSV rows (bad quoting, a field count unlike the header's) are skipped and counted in the
file's ReadTally, or stop the run under strict; JSON that does not parse is an error naming the line."""

from __future__ import annotations

import csv
import json
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from babeltune.corpus.readlog import MAX_RECORD_BYTES, FileProblem, ReadTally
from babeltune.corpus.textread import open_regular
from babeltune.errors import BabeltuneError

CSV_FIX = "fix the quoting there (a field holding a delimiter, quote or line break must be quoted, quotes doubled)"
PARQUET_BATCH_BYTES = 64 << 20     # rows converted to Python at once: bounded by bytes, not only by count
PARQUET_BATCH_ROWS = 2048


def lines_of(pieces: Iterable[tuple[int, bytes, str]]) -> Iterator[str]:
    """Lines of a text stream, newline kept (csv needs it for quoted multi-line fields)."""
    for _, _, piece in pieces:
        parts = piece.split("\n")
        for part in parts[:-1]:
            yield part + "\n"
        if parts[-1]:
            yield parts[-1]


# --------------------------------------------------------------------------- JSONL


def jsonl_records(lines: Iterable[str], path: Path, tally: ReadTally) -> Iterator[dict]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BabeltuneError(f"corpus: {path} line {number}: invalid JSON ({exc.msg}); fix the line "
                                 f"or remove it (JSONL holds one JSON object per line)") from None
        except RecursionError:
            raise BabeltuneError(f"corpus: {path} line {number}: invalid JSON (nested too deeply to parse); "
                                 f"fix the line or remove it (JSONL holds one flat JSON object per line)") from None
        if not isinstance(record, dict):
            raise BabeltuneError(f"corpus: {path} line {number}: a JSON {type(record).__name__}, not an "
                                 f"object; JSONL needs one object per line, e.g. {{\"text\": \"...\"}}")
        tally.records += 1
        yield record


# --------------------------------------------------------------------------- CSV / TSV


def csv_table(lines: Iterable[str], path: Path, spec, tally: ReadTally) -> tuple[str, Iterator[dict]]:
    """(text column, rows as dicts) of a CSV/TSV file; the header is read and the column checked up front.
    The csv module runs in strict mode, so a closing quote followed by text, or a quote left open to the
    end of the file, is an error for that record instead of silently merging the lines that follow."""
    csv.field_size_limit(MAX_RECORD_BYTES)    # documents may be far longer than csv's 128 KiB default
    kind = path.suffix.lstrip(".").upper()
    source = _RecordLines(lines)
    reader = csv.reader(source, delimiter="\t" if kind == "TSV" else ",", strict=True)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise _csv_error(path, reader, exc) from None
    return choose_column(header, spec, path), _csv_rows(reader, source, header, kind, tally)


class _RecordLines:
    """Feeds lines to csv.reader and keeps those of the record being parsed, so that after a malformed
    record the lines after its first are parsed again, once: an unclosed quote then costs its own line,
    not every row up to the next quote or the end of the file. Replays are bounded by the file's size."""

    def __init__(self, lines: Iterable[str]):
        self.source = iter(lines)
        self.number = 0                                      # lines taken from the file
        self.replay: deque[tuple[int, str, bool]] = deque()
        self.record: list[tuple[int, str, bool]] = []        # (line number, text, replayed already)

    def __iter__(self) -> "_RecordLines":
        return self

    def __next__(self) -> str:
        if self.replay:
            entry = self.replay.popleft()
        else:
            self.number += 1
            entry = (self.number, next(self.source), False)
        self.record.append(entry)
        return entry[1]

    def start_record(self) -> None:
        self.record = []

    def recover(self) -> tuple[int, int]:
        """Put back the bad record's lines after its first (those not replayed before): (first line, lines lost)."""
        first, rest = self.record[0][0] if self.record else self.number, self.record[1:]
        again = [(number, text, True) for number, text, replayed in rest if not replayed]
        self.replay.extendleft(reversed(again))
        return first, len(self.record) - len(again)


def _csv_rows(reader, source: _RecordLines, header: list[str], kind: str, tally: ReadTally) -> Iterator[dict]:
    width = len(header)
    while True:
        source.start_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            first, lost = source.recover()
            why = str(exc).split(" - ")[0]
            tally.skip(f"malformed {kind} row: {why}", unit="row", line=first, lines=lost, fix=CSV_FIX)
            continue
        if not row:
            continue          # a blank line
        if len(row) != width:
            tally.skip(f"row whose field count differs from the header's {width}", unit="row",
                       line=source.record[0][0], lines=len(source.record),
                       fix=f"give every row {width} fields (quote fields that hold the delimiter)")
            continue
        tally.records += 1
        yield dict(zip(header, row))


def _csv_error(path: Path, reader, exc: csv.Error) -> BabeltuneError:
    why = str(exc).split(" - ")[0]   # drop csv's hint about universal-newline mode: not the user's fix
    return BabeltuneError(f"corpus: {path} near line {max(1, reader.line_num)}: malformed "
                          f"{path.suffix.lstrip('.').upper()} ({why}); fix the quoting there "
                          f"(fields holding line breaks must be quoted)")


# --------------------------------------------------------------------------- parquet


def open_parquet(source, path: Path):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(source)
    except Exception as exc:  # pyarrow raises several types for a corrupt/foreign file
        raise FileProblem(f"not a readable parquet file ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def parquet_columns(path: Path) -> list[str]:
    with open_regular(path) as handle:
        return list(open_parquet(handle, path).schema_arrow.names)


def _batch_rows(metadata) -> int:
    """Rows per batch so that a batch holds about PARQUET_BATCH_BYTES (uncompressed): a file of a few
    huge rows is converted row by row."""
    widest = max((metadata.row_group(i).total_byte_size / max(1, metadata.row_group(i).num_rows)
                  for i in range(metadata.num_row_groups)), default=1)
    return int(max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // max(1, widest))))


def parquet_rows(path: Path, tally: ReadTally, columns: Optional[list[str]] = None) -> Iterator[dict]:
    with open_regular(path) as handle:
        parquet = open_parquet(handle, path)
        batches = parquet.iter_batches(batch_size=_batch_rows(parquet.metadata), columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:   # data pages corrupt although the footer was readable
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise BabeltuneError(f"corpus: {path}: unreadable parquet data ({reason}); "
                                     f"fix: rewrite the file or remove it") from None
            for row in batch.to_pylist():
                tally.records += 1
                yield row


# --------------------------------------------------------------------------- the text of a record


def row_text(row: dict, column: Optional[str], path: Path, spec) -> str:
    """The document text of one row: the JSONL field (dots walk into objects) or the table column."""
    if column is None:
        key, option = spec.text_field, "--text-field"
        value, found = _lookup(row, key)
    else:
        key, option = column, "--text-column"
        value, found = row.get(column), True
    if not found:
        raise BabeltuneError(f"corpus: {path}: a record has no field {key!r} (fields: "
                             f"{', '.join(map(shown, row)) or 'none'}); pass {option} naming the text field")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BabeltuneError(f"corpus: {path}: field {key!r} holds a {type(value).__name__}, not text; "
                             f"pass {option} naming a field that holds a string")
    return value


def encodable(text: str) -> bool:
    """False for text holding an unpaired surrogate (JSON allows the escape "\\ud800"; UTF-8 cannot hold it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: object) -> str:
    """A field/column name for a one-line message: odd names (line breaks, quotes) are escaped."""
    text = str(name)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _lookup(record: dict, key: str) -> tuple[Any, bool]:
    if key in record:
        return record[key], True
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None, False
        value = value[part]
    return value, True


def choose_column(columns: list[str], spec, path: Path) -> str:
    wanted = spec.text_column or "text"
    if wanted in columns:
        return wanted
    listed = ", ".join(map(shown, columns)) or "none"
    if spec.text_column:
        raise BabeltuneError(f"corpus: {path} has no column {wanted!r} (columns: {listed}); "
                             f"pass --text-column with one of these")
    raise BabeltuneError(f"corpus: {path} has no 'text' column (columns: {listed}); "
                         f"pass --text-column naming the column that holds the text")
