"""The fast counting pass: exact characters, bytes, documents and words of a corpus, plus a seeded uniform
random sample of its documents, without a Python loop per character or per line.

One-document-per-line .txt files are cut into newline-aligned byte ranges and scanned on large binary
chunks (in parallel processes for big corpora): UTF-8 validation and character counts come from one
``bytes.decode``, whitespace from one ``bytes.translate`` into byte classes, words from numpy on those
classes. Other formats go document by document. The counts equal what a brute-force loop over
``iter_documents`` computes (``len(doc)``, ``len(doc.encode())``, ``len(doc.split())``). The same pass feeds
every document to a bounded duplicate counter (``babeltune.corpus.duplicates``).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

from babeltune.corpus.reader import CorpusSpec, FileProblem, check_file, documents_in_file, iter_text_chunks
from babeltune.corpus.readlog import ReadTally
from babeltune.corpus.textread import open_regular
from babeltune.corpus.duplicates import DuplicateCounter

# documents of one file (default: documents_in_file; the tally counts what reading skips or cuts)
DocumentReader = Callable[[Path, CorpusSpec, ReadTally], Iterator[str]]

POOL_DOCS = 60_000              # most sampled documents kept; ~38k suffice even for very mixed corpora
POOL_CHARS = 64_000_000         # and at most this much text, so memory stays bounded for long documents
SEGMENT_BYTES = 64 << 20        # one parallel task; keeps every worker busy on a few big files too
PARALLEL_MIN_BYTES = 96 << 20   # below this, starting worker processes costs more than it saves
MAX_WORKERS = 4                 # ~100 MB each: bounds peak memory on many-core machines

# Byte classes: "\n" stays, the other characters str.isspace() calls ASCII whitespace become " ", and
# every other byte (including all bytes of multi-byte characters) becomes "a".
_ASCII_SPACES = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"       # what str.strip()/split() remove, below 0x80
_CLASS_TABLE = bytes(0x0A if b == 0x0A else 0x20 if b in _ASCII_SPACES else 0x61 for b in range(256))
_LETTER_CLASS = 0x61
# Lead bytes of the non-ASCII whitespace characters (U+0085, U+00A0, U+1680, U+2000-200A, U+2028/9,
# U+202F, U+205F, U+3000); only pieces holding one of these characters need the slower exact path.
_SPACE_LEADS = (0xC2, 0xE1, 0xE2, 0xE3)
_E2_80_SPACES = np.array([*range(0x80, 0x8B), 0xA8, 0xA9, 0xAF], dtype=np.uint8)


@dataclass
class Counts:
    documents: int = 0
    characters: int = 0
    bytes: int = 0
    words: int = 0

    def add(self, other: "Counts") -> None:
        self.documents += other.documents
        self.characters += other.characters
        self.bytes += other.bytes
        self.words += other.words


Doc = Union[bytes, str]          # sampled lines stay raw bytes until the end: most are pruned again


@dataclass
class SamplePool:
    """Bottom-k sample: every document gets a seeded uniform key and those with the smallest keys are
    kept. The pool always holds every document whose key is below ``threshold``, so its documents in key
    order — and any prefix of them — form a uniform random sample without replacement."""

    capacity: int = field(default_factory=lambda: POOL_DOCS)
    threshold: float = 1.0
    keys: list[float] = field(default_factory=list)
    docs: list[Doc] = field(default_factory=list)
    chars: int = 0
    complete: bool = True        # nothing pruned: holds every document offered

    def offer(self, rng: np.random.Generator, count: int) -> list[tuple[int, float]]:
        """Draw keys for ``count`` documents; (index, key) of those that enter the pool."""
        keys = rng.random(count)
        picked = np.flatnonzero(keys < self.threshold)
        return list(zip(picked.tolist(), keys[picked].tolist()))

    def extend(self, keys: list[float], docs: list[Doc]) -> None:
        self.keys.extend(keys)
        self.docs.extend(docs)
        self.chars += sum(map(len, docs))
        if len(self.keys) > self.capacity * 3 // 2 or self.chars > POOL_CHARS * 3 // 2:
            self.prune()

    def prune(self, threshold: float = 1.0) -> None:
        """Keep the smallest keys: at most ``capacity`` documents and POOL_CHARS characters, all at or
        below ``threshold``; what is dropped lowers the pool's threshold."""
        keys = np.asarray(self.keys)
        order = np.argsort(keys, kind="stable")
        lengths = np.fromiter(map(len, self.docs), dtype=np.int64, count=len(self.docs))[order]
        cut = min(self.capacity, int(np.searchsorted(keys[order], threshold, side="right")),
                  max(1, int(np.searchsorted(np.cumsum(lengths), POOL_CHARS, side="right"))))
        if cut < len(order):
            self.complete = False
            self.threshold = min(threshold, float(keys[order[cut - 1]])) if cut else threshold
        elif not self.complete:
            self.threshold = min(self.threshold, threshold)
        keep = order[:cut].tolist()
        self.keys = [self.keys[i] for i in keep]
        self.docs = [self.docs[i] for i in keep]
        self.chars = int(lengths[:cut].sum())

    @classmethod
    def merge(cls, pools: list["SamplePool"], capacity: Optional[int] = None) -> "SamplePool":
        """One pool from pools of disjoint document sets (keys from independent streams): everything at
        or below the smallest threshold, capped again."""
        merged = cls(capacity=capacity or POOL_DOCS)
        merged.complete = all(p.complete for p in pools)
        for pool in pools:
            merged.keys.extend(pool.keys)
            merged.docs.extend(pool.docs)
        if merged.keys:
            merged.prune(min((p.threshold for p in pools), default=1.0))
        return merged

    def ordered_documents(self) -> list[str]:
        order = np.argsort(np.asarray(self.keys), kind="stable").tolist()
        return [_as_document(self.docs[i]) for i in order]


def _as_document(doc: Doc) -> str:
    return doc.decode("utf-8").strip() if isinstance(doc, bytes) else doc


# --------------------------------------------------------------------------- one range of a line file


@dataclass
class ScanTask:
    file_index: int
    path: str
    start: int
    end: Optional[int]
    seed: tuple[int, ...]
    strict: bool = False
    size: int = 0                # bytes in the range
    capacity: int = 0            # set by scan_files: this range's share of the sample


@dataclass
class ScanResult:
    file_index: int
    counts: Counts
    pool: SamplePool
    problem: Optional[tuple[str, Optional[int]]] = None    # (reason, byte offset): the whole file is skipped
    tally: ReadTally = field(default_factory=ReadTally)     # lines skipped, documents cut (line numbers in the range)
    duplicates: Optional[DuplicateCounter] = None


def scan_line_range(task: ScanTask) -> ScanResult:
    """Counts and sample of one newline-aligned byte range of a one-document-per-line file."""
    rng = np.random.default_rng(task.seed)
    counts, pool, tally = Counts(), SamplePool(capacity=task.capacity), ReadTally(strict=task.strict)
    duplicates = DuplicateCounter()
    try:
        for _, raw, text in iter_text_chunks(Path(task.path), start=task.start, end=task.end, tally=tally):
            _scan_piece(raw, text, counts, pool, rng, duplicates)
    except FileProblem as problem:
        return ScanResult(task.file_index, counts, SamplePool(), (problem.reason, problem.offset))
    except OSError as exc:
        return ScanResult(task.file_index, counts, SamplePool(), (f"read error: {exc.strerror or exc}", None))
    return ScanResult(task.file_index, counts, pool, tally=tally, duplicates=duplicates)


def _scan_piece(raw: bytes, text: str, counts: Counts, pool: SamplePool, rng: np.random.Generator,
                duplicates: DuplicateCounter) -> None:
    data = np.frombuffer(raw, dtype=np.uint8)
    if _has_non_ascii_space(raw, text, data):
        lines = list(map(str.strip, text.split("\n")))
        _count_lines(lines, counts)
        duplicates.add_documents([line for line in lines if line])
        entries = [(key, lines[i]) for i, key in pool.offer(rng, len(lines)) if lines[i]]
    else:
        newlines = _count_bytes(raw, text, counts)
        duplicates.add_line_piece(raw, text, newlines, _ASCII_SPACES)
        entries = _pick_raw_lines(raw, newlines, pool.offer(rng, len(newlines) + 1))
    if entries:
        pool.extend([k for k, _ in entries], [d for _, d in entries])


def _has_non_ascii_space(raw: bytes, text: str, data: np.ndarray) -> bool:
    """Whether the piece holds a whitespace character outside ASCII. Lead-byte memchr first; the
    U+2000 block shares its lead bytes with common punctuation (’ “ ” –), so it is checked with numpy."""
    if b"\xc2" in raw and ("\xa0" in text or "\x85" in text):
        return True
    if (b"\xe1" in raw and "\u1680" in text) or (b"\xe3" in raw and "\u3000" in text):
        return True
    if b"\xe2" not in raw:
        return False
    at = np.flatnonzero(data[:-2] == 0xE2)
    second, third = data[at + 1], data[at + 2]
    return bool(np.any(((second == 0x80) & np.isin(third, _E2_80_SPACES)) | ((second == 0x81) & (third == 0x9F))))


def _count_bytes(raw: bytes, text: str, counts: Counts) -> np.ndarray:
    """Counts for a piece whose only whitespace is ASCII; returns the positions of its newlines."""
    classes = np.frombuffer(raw.translate(_CLASS_TABLE), dtype=np.uint8)
    letters = classes == _LETTER_CLASS
    newlines = np.flatnonzero(classes == 0x0A)
    if _lines_are_clean(letters, newlines):
        # No blank lines, no spaces at either end of a line: every line is a document as it stands.
        doc_bytes = len(raw) - len(newlines)
        documents = len(newlines) + int(not raw.endswith(b"\n"))
    else:
        byte_lengths = list(map(len, map(bytes.strip, classes.tobytes().split(b"\n"))))
        doc_bytes = sum(byte_lengths)
        documents = len(byte_lengths) - byte_lengths.count(0)
    # Continuation bytes (len(raw) - len(text)) all belong to non-space characters inside documents.
    counts.characters += doc_bytes - (len(raw) - len(text))
    counts.bytes += doc_bytes
    counts.documents += documents
    # A word starts wherever a letter-class byte follows a space/newline (or opens the piece).
    starts = letters.view(np.uint8)
    counts.words += int(np.count_nonzero(starts[1:] > starts[:-1])) + int(starts[0]) if len(starts) else 0
    return newlines


def _lines_are_clean(letters: np.ndarray, newlines: np.ndarray) -> bool:
    """True when every line starts and ends with a non-space character (the usual case)."""
    size = len(letters)
    if not size or not letters[0] or not (letters[-1] or (len(newlines) and newlines[-1] == size - 1)):
        return False
    if not len(newlines):
        return True
    if newlines[0] == 0 or not letters[newlines - 1].all():
        return False
    after = newlines[:-1] + 1 if newlines[-1] == size - 1 else newlines + 1
    return bool(letters[after].all())


def _count_lines(lines: list[str], counts: Counts) -> None:
    """Exact path for pieces holding non-ASCII whitespace: per stripped line, C-level maps only."""
    lengths = list(map(len, lines))
    counts.characters += sum(lengths)
    counts.bytes += sum(map(len, map(str.encode, lines)))
    counts.documents += len(lengths) - lengths.count(0)
    counts.words += sum(map(len, map(str.split, lines)))


def _pick_raw_lines(raw: bytes, newlines: np.ndarray, picked: list[tuple[int, float]]) -> list[tuple[float, bytes]]:
    if not picked:
        return []
    ends = newlines.tolist() + [len(raw)]
    chosen = [(key, raw[(ends[i - 1] + 1 if i else 0):ends[i]]) for i, key in picked]
    return [(key, line) for key, line in chosen if line.strip(_ASCII_SPACES)]


# --------------------------------------------------------------------------- other formats


def scan_documents(path: Path, spec: CorpusSpec, file_index: int, seed: int,
                   reader: DocumentReader = documents_in_file) -> ScanResult:
    """Counts and sample of any other file, document by document (keys drawn per batch)."""
    problem = check_file(path)
    if problem is not None:
        return ScanResult(file_index, Counts(), SamplePool(), (problem.reason, problem.offset))
    rng = np.random.default_rng((seed, file_index, 0))
    counts, pool, batch, tally = Counts(), SamplePool(), [], ReadTally(strict=spec.strict)
    duplicates = DuplicateCounter()
    try:
        for doc in reader(path, spec, tally):
            batch.append(doc)
            if len(batch) >= 4096:
                _count_batch(batch, counts, pool, rng, duplicates)
                batch = []
    except FileProblem as problem:
        return ScanResult(file_index, Counts(), SamplePool(), (problem.reason, problem.offset))
    except OSError as exc:
        return ScanResult(file_index, Counts(), SamplePool(), (f"read error: {exc.strerror or exc}", None))
    _count_batch(batch, counts, pool, rng, duplicates)
    return ScanResult(file_index, counts, pool, tally=tally, duplicates=duplicates)


def _count_batch(batch: list[str], counts: Counts, pool: SamplePool, rng: np.random.Generator,
                 duplicates: DuplicateCounter) -> None:
    _count_lines(batch, counts)
    duplicates.add_documents(batch)
    entries = [(key, batch[i]) for i, key in pool.offer(rng, len(batch))]
    if entries:
        pool.extend([k for k, _ in entries], [d for _, d in entries])


# --------------------------------------------------------------------------- the whole corpus


def line_segments(path: Path, target: int = SEGMENT_BYTES) -> list[tuple[int, Optional[int]]]:
    """Cut a file into byte ranges of about ``target`` bytes, each ending just after a newline. Raises
    FileProblem when the file cannot be opened (or is not a regular file)."""
    bounds = [0]
    with open_regular(str(path)) as handle:
        size = os.fstat(handle.fileno()).st_size
        position = target
        while position < size:
            newline = _next_newline(handle, position)
            if newline is None or newline + 1 >= size:
                break
            bounds.append(newline + 1)
            position = newline + 1 + target
    ends: list[Optional[int]] = bounds[1:] + [None]
    return list(zip(bounds, ends))


def _next_newline(handle, position: int) -> Optional[int]:
    """Offset of the first newline at or after ``position``; each block is searched once (linear even
    for an enormous line), None when there is none."""
    handle.seek(position)
    while True:
        block = handle.read(1 << 20)
        if not block:
            return None
        found = block.find(b"\n")
        if found >= 0:
            return position + found
        position += len(block)


def scan_files(files: list[Path], spec: CorpusSpec, seed: int, workers: Optional[int] = None,
               reader: Optional[DocumentReader] = None) -> Iterator[ScanResult]:
    """Scan every file, yielding results file by file (a file's ranges consecutively, in order); line
    files in newline-aligned ranges, in parallel processes when large. ``reader`` replaces how documents
    are read from a file (every file then goes document by document)."""
    line_mode = spec.doc_split == "line" and reader is None
    tasks = []
    for index, path in enumerate(files):
        if line_mode and path.suffix.lower() == ".txt":
            try:
                segments = line_segments(path)
                size = path.stat().st_size
            except (FileProblem, OSError) as problem:
                reason = problem.reason if isinstance(problem, FileProblem) else f"unreadable: {problem.strerror}"
                yield ScanResult(index, Counts(), SamplePool(), (reason, None))
                continue
            for part, (start, end) in enumerate(segments):
                tasks.append(ScanTask(index, str(path), start, end, (seed, index, part), spec.strict,
                                      (end or size) - start))
        else:
            yield scan_documents(path, spec, index, seed, reader or documents_in_file)
    line_bytes = sum(task.size for task in tasks)
    for task in tasks:
        # Each range keeps its share of the final sample (with room to spare), not a full sample:
        # that is what keeps the sampling cheap when a big corpus is cut into many ranges.
        task.capacity = min(POOL_DOCS, max(2_000, int(1.5 * POOL_DOCS * task.size / max(line_bytes, 1))))
    workers = workers or min(os.cpu_count() or 1, MAX_WORKERS, len(tasks))
    done = 0
    if workers > 1 and line_bytes >= PARALLEL_MIN_BYTES and _can_spawn():
        try:
            # spawn, not fork: a forked child would inherit the tokenizer's thread pool state
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for result in pool.map(scan_line_range, tasks):
                    done += 1
                    yield result
        except (BrokenProcessPool, OSError):
            if done:   # workers died halfway: nothing sensible to resume from
                raise
            # no worker processes possible here: the same scan, serially, below
    yield from map(scan_line_range, tasks[done:])


class SampleFolder:
    """Folds per-file pools into one as they arrive, so memory stays bounded however many files."""

    def __init__(self) -> None:
        self.pools: list[SamplePool] = []
        self.entries = 0

    def add(self, pools: list[SamplePool]) -> None:
        self.pools.extend(pools)
        self.entries += sum(len(p.keys) for p in pools)
        if self.entries > 2 * POOL_DOCS:
            self.pools = [SamplePool.merge(self.pools)]
            self.entries = len(self.pools[0].keys)

    def result(self) -> SamplePool:
        return SamplePool.merge(self.pools)


def _can_spawn() -> bool:
    """Spawned workers re-import the main script; impossible when it came from stdin or ``-c``."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    main_file = getattr(main, "__file__", None)
    return bool(spec_name) or main_file is None or Path(main_file).is_file()


__all__ = ["Counts", "SampleFolder", "SamplePool", "ScanResult", "scan_files", "line_segments"]
