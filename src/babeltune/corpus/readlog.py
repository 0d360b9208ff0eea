"""What reading a corpus left out or changed, counted per file and reported one line each.

"Nothing lost in silence": a line with undecodable bytes, a malformed CSV row or an over-long record is
skipped and counted here (or, under ``strict``, stops the run); a document longer than
MAX_DOCUMENT_BYTES is cut into pieces and counted too. ``ReadTally.entries`` turns the counts of one
file into ``SkippedFile`` records that `advise` prints and `train` writes into its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from babeltune.corpus.skipped import SkippedFile

MAX_DOCUMENT_BYTES = 256 << 10   # longer documents are cut into pieces of at most this much UTF-8 text:
#                                  still longer than common context windows (>= 60k tokens), while a tokenizer
#                                  needs ~400 bytes per character of one document (measured on byte-level BPE)
MAX_RECORD_BYTES = 64 << 20      # a JSONL/CSV line longer than this is skipped: parsing needs it whole in memory
#                                  (~10 bytes per byte of it at the peak, while it is parsed and cut)
CUT_LOOKBACK = 4096              # a cut goes at the last space or tab within this many bytes before the bound
TOKENIZE_CHARS = 1 << 20         # characters per tokenizer call (~400 MB of tokenizer memory at most)
SHOWN_ENTRIES = 20               # report lines printed before "... and N more"


class FileProblem(Exception):
    """A file (or, under strict, a record of it) that cannot be read: why, the byte offset of the first
    bad byte where there is one, and the fix to suggest."""

    def __init__(self, reason: str, offset: Optional[int] = None, fix: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset
        self.fix = fix


@dataclass
class Skips:
    """One kind of skipped record in one file."""

    count: int = 0
    bytes: int = 0
    lines: int = 0                  # lines the skipped records spanned
    line: Optional[int] = None      # 1-based line of the first
    offset: Optional[int] = None    # byte offset of the first


@dataclass
class ReadTally:
    """Per file: records read, records skipped (by reason), documents cut. Under ``strict`` the first skip
    raises FileProblem instead. ``lines`` counts newlines read, so that tallies of byte ranges read apart
    can be merged with their line numbers placed in the whole file."""

    strict: bool = False
    records: int = 0                # lines/rows/objects read
    skips: dict[str, Skips] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)     # reason -> "line" / "row"
    cut_documents: int = 0
    cuts: int = 0                   # places where those documents were cut
    lines: int = 0

    def skip(self, reason: str, *, unit: str = "line", line: Optional[int] = None, offset: Optional[int] = None,
             nbytes: int = 0, lines: int = 1, fix: Optional[str] = None) -> None:
        if self.strict:
            where = ", ".join(part for part in (f"line {line}" if line else "",
                                                f"byte {offset}" if offset is not None else "") if part)
            raise FileProblem(f"{reason}" + (f" ({where})" if where else ""), offset, fix)
        entry = self.skips.setdefault(reason, Skips())
        self.units.setdefault(reason, unit)
        entry.count += 1
        entry.bytes += nbytes
        entry.lines += lines
        if entry.line is None and entry.offset is None:
            entry.line, entry.offset = line, offset

    def cut(self, cuts: int) -> None:
        """One document was cut at ``cuts`` places."""
        if cuts:
            self.cut_documents += 1
            self.cuts += cuts

    @property
    def skipped(self) -> int:
        return sum(entry.count for entry in self.skips.values())

    def merge(self, later: "ReadTally") -> None:
        """Add the tally of the byte range that follows this one in the same file."""
        self.records += later.records
        for reason, entry in later.skips.items():
            mine = self.skips.setdefault(reason, Skips())
            self.units.setdefault(reason, later.units.get(reason, "line"))
            if mine.line is None and mine.offset is None:
                mine.line = None if entry.line is None else entry.line + self.lines
                mine.offset = entry.offset
            mine.count += entry.count
            mine.bytes += entry.bytes
            mine.lines += entry.lines
        self.cut_documents += later.cut_documents
        self.cuts += later.cuts
        self.lines += later.lines

    def entries(self, path: str) -> list[SkippedFile]:
        out = []
        for reason, entry in self.skips.items():
            out.append(SkippedFile(path, reason, entry.offset, kind="records", count=entry.count,
                                   unit=self.units.get(reason, "line"), line=entry.line, bytes=entry.bytes,
                                   lines=entry.lines))
        if self.cut_documents:
            out.append(SkippedFile(path, f"cut {self.cut_documents:,} document(s) longer than {MAX_DOCUMENT_BYTES:,} "
                                         f"bytes into pieces at {self.cuts:,} places (nothing dropped)",
                                   kind="cut", count=self.cut_documents))
        return out


# --------------------------------------------------------------------------- cutting long documents


def cut_point(buffer: bytes, limit: int, start: int = 0) -> int:
    """Where to cut ``buffer[start:]`` (longer than ``limit`` bytes of UTF-8) so the piece from ``start``
    holds at most ``limit`` bytes: just after the last space or tab near the bound, else at a character
    boundary. Returns an index into ``buffer``."""
    bound = start + limit
    low = max(start + 1, bound - CUT_LOOKBACK)
    space = max(buffer.rfind(b" ", low, bound), buffer.rfind(b"\t", low, bound))
    if space >= 0:
        return space + 1
    cut = bound
    while cut > start + 1 and buffer[cut] & 0xC0 == 0x80:     # never inside a multi-byte character
        cut -= 1
    return cut


def cut_text(text: str, tally: ReadTally, limit: int = MAX_DOCUMENT_BYTES) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` bytes of UTF-8 (one piece when it is short), counted."""
    if len(text) * 4 <= limit:
        yield text
        return
    raw = text.encode("utf-8")
    start = cuts = 0
    while len(raw) - start > limit:
        at = cut_point(raw, limit, start)
        yield raw[start:at].decode("utf-8")
        start, cuts = at, cuts + 1
    tally.cut(cuts)
    yield raw[start:].decode("utf-8") if cuts else text


def batches(texts: Iterable[str], max_texts: int, max_chars: int = TOKENIZE_CHARS) -> Iterator[list[str]]:
    """Lists of at most ``max_texts`` texts and (unless one text alone is longer) ``max_chars`` characters:
    what one tokenizer call gets, so its memory is bounded by characters, not by a count of documents."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        if batch and (len(batch) >= max_texts or chars + len(text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text)
    if batch:
        yield batch


# --------------------------------------------------------------------------- reporting


def report_lines(entries: list[SkippedFile], limit: int = SHOWN_ENTRIES) -> list[str]:
    """One line per entry (the first ``limit``), then how many more there are."""
    lines = [entry.describe() for entry in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"... and {len(entries) - limit:,} more skipped/cut entries (all are in the JSON output "
                     f"or the run manifest)")
    return lines


def summary(entries: list[SkippedFile]) -> dict[str, int]:
    """Counts for a manifest: files skipped whole, records skipped, documents cut."""
    return {
        "skipped_files": sum(1 for e in entries if e.kind == "file"),
        "skipped_records": sum(e.count for e in entries if e.kind == "records"),
        "cut_documents": sum(e.count for e in entries if e.kind == "cut"),
    }


__all__ = ["FileProblem", "MAX_DOCUMENT_BYTES", "MAX_RECORD_BYTES", "ReadTally", "batches", "cut_point", "cut_text",
           "report_lines", "summary"]
