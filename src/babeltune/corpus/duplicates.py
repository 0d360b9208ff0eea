"""Duplicate documents, counted while the corpus streams past, in bounded memory.

Two keys per document:
  exact  the document's text (after the reader's strip), hashed;
  near   the text with URLs and @mentions removed, ASCII letters lower-cased and every other ASCII character
         (spaces, punctuation, symbols) dropped, hashed: "Ok, thanks!!" and "ok thanks" are the same near key,
         and so are a retweet and its original with another short link. Digits and every non-ASCII character
         (letters, marks and punctuation of other scripts) are kept, so the key costs a few C-level passes over
         each chunk, never a Python loop per character.

Each key goes into a :class:`HashCounts`: distinct 64-bit hashes with how often each occurred and the length
of its document in characters. Memory is flat: when more than ``capacity`` distinct hashes are held, only hashes below a
threshold are kept from then on (hash-based sampling: every copy of a text has the same hash, so a text is
kept with all its copies or not at all), halving the threshold until they fit. The duplicate share and the
unique share of the text are then ratio estimates over the kept texts and the result says it was sampled.

Deduplicating training text makes language models better and memorise less (Lee et al. 2022,
"Deduplicating Training Data Makes Language Models Better"); `train` removes duplicates with the same keys
(``data.dedup``, :func:`near_key` / :func:`exact_key`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Optional

import numpy as np
import regex

CAPACITY = 1 << 19               # distinct hashes per key before sampling starts (~12 MB per key)
LEE_2022 = "Lee et al. 2022, Deduplicating Training Data Makes Language Models Better"

_URL_OR_MENTION = regex.compile(r"(?:https?://|www\.)\S+|@\w+")
_URL_HINTS = (b"@", b"http", b"www.")          # where _URL_OR_MENTION can match at all
_ASCII_ALNUM = set(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _drop_table(keep: bytes) -> bytes:
    """ASCII bytes that the near key drops: all but letters and digits (and the separator ``keep``)."""
    return bytes(b for b in range(128) if b not in _ASCII_ALNUM and bytes([b]) != keep)


_DROP = {b"": _drop_table(b""), b"\n": _drop_table(b"\n"), b"\x00": _drop_table(b"\x00")}


def hashes_of(items: list[bytes]) -> np.ndarray:
    """A 64-bit hash of each item, stable across processes and runs (unlike hash()): its CRC-32 and its length
    (C speed, ~5x faster than BLAKE2b per short document), mixed by the SplitMix64 finaliser so that the bits
    are uniform, which the threshold sampling needs. Two different texts of the same length collide with
    probability 2**-32: even if all 524k texts held at most had one length, ~32 false duplicates (0.006%)
    would be expected. Only the counts depend on it: `train` compares the texts themselves."""
    if not items:
        return np.zeros(0, dtype=np.uint64)
    crc = np.fromiter(map(zlib.crc32, items), dtype=np.uint64, count=len(items))
    length = np.fromiter(map(len, items), dtype=np.uint64, count=len(items))
    return _splitmix64((crc << np.uint64(32)) ^ length)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def normalise(text: str, separator: bytes = b"") -> bytes:
    """The near-key text of ``text`` (one document, or documents joined by ``separator``, which is kept)."""
    if "@" in text or "http" in text or "www." in text:     # substring tests are C speed; the regex is not
        text = _URL_OR_MENTION.sub("", text)
    return text.encode("utf-8").lower().translate(None, _DROP[separator])


def exact_key(text: str) -> bytes:
    return text.encode("utf-8")


def near_key(text: str) -> bytes:
    return normalise(text)


# --------------------------------------------------------------------------- bounded hash counts


@dataclass
class HashCounts:
    """Distinct hashes (sorted), their occurrence counts and document sizes (characters); bounded by ``capacity``."""

    capacity: int = field(default_factory=lambda: CAPACITY)
    shift: int = 0                                   # keep hashes < 2**(64 - shift): sampling rate 2**-shift
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    pending_items: int = 0

    def _kept(self, hashes: np.ndarray) -> np.ndarray:
        return np.ones(len(hashes), dtype=bool) if self.shift == 0 else hashes < np.uint64(1 << (64 - self.shift))

    def add(self, hashes: np.ndarray, sizes: np.ndarray) -> None:
        keep = self._kept(hashes)
        if not keep.all():
            hashes, sizes = hashes[keep], sizes[keep]
        if len(hashes):
            self.pending.append((hashes, np.asarray(sizes, dtype=np.int64)))
            self.pending_items += len(hashes)
            if self.pending_items >= self.capacity:
                self.compact()

    def compact(self) -> None:
        """Fold pending hashes in; past ``capacity`` distinct hashes, halve the sampling rate until they fit."""
        if not self.pending:
            return
        hashes = np.concatenate([self.hashes] + [h for h, _ in self.pending])
        counts = np.concatenate([self.counts] + [np.ones(len(h), dtype=np.int64) for h, _ in self.pending])
        sizes = np.concatenate([self.sizes] + [s for _, s in self.pending])
        self.pending, self.pending_items = [], 0
        self._fold(hashes, counts, sizes)

    def _fold(self, hashes: np.ndarray, counts: np.ndarray, sizes: np.ndarray) -> None:
        unique, inverse = np.unique(hashes, return_inverse=True)
        folded_counts = np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)
        folded_sizes = np.zeros(len(unique), dtype=np.int64)
        np.maximum.at(folded_sizes, inverse, sizes)     # near duplicates may differ a little in size
        while len(unique) > self.capacity:
            self.shift += 1
            keep = self._kept(unique)
            unique, folded_counts, folded_sizes = unique[keep], folded_counts[keep], folded_sizes[keep]
        self.hashes, self.counts, self.sizes = unique, folded_counts, folded_sizes

    def merge(self, other: "HashCounts") -> None:
        """Add another stream's counts (same key). Both end at the lower sampling rate."""
        self.compact()
        other.compact()
        self.shift = max(self.shift, other.shift)
        keep_self, keep_other = self._kept(self.hashes), self._kept(other.hashes)
        self._fold(np.concatenate([self.hashes[keep_self], other.hashes[keep_other]]),
                   np.concatenate([self.counts[keep_self], other.counts[keep_other]]),
                   np.concatenate([self.sizes[keep_self], other.sizes[keep_other]]))

    def count_of(self, hashes: np.ndarray) -> np.ndarray:
        """Occurrences of each given hash (0 where not held)."""
        self.compact()
        at = np.searchsorted(self.hashes, hashes)
        at = np.minimum(at, max(len(self.hashes) - 1, 0))
        found = (len(self.hashes) > 0) & (self.hashes[at] == hashes) if len(self.hashes) else np.zeros(len(hashes), bool)
        return np.where(found, self.counts[at] if len(self.hashes) else 0, 0)


@dataclass
class KeyStats:
    """What one key found, scaled to the whole corpus (exact when not sampled)."""

    duplicate_documents: int          # documents that repeat an earlier one
    unique_share: float               # share of the characters left after removing the repeats
    most_repeated: int                # occurrences of the most repeated text (among those held)
    sampled: bool
    sampling_rate: float


def key_stats(counts: HashCounts, documents: int) -> KeyStats:
    counts.compact()
    held_docs = int(counts.counts.sum())
    if held_docs == 0:
        return KeyStats(0, 1.0, 0, counts.shift > 0, 2.0 ** -counts.shift)
    distinct = len(counts.hashes)
    held_bytes = float((counts.sizes * counts.counts).sum())
    unique_share = float(counts.sizes.sum()) / held_bytes if held_bytes else 1.0
    duplicates = documents - distinct if counts.shift == 0 else round(documents * (1 - distinct / held_docs))
    return KeyStats(int(duplicates), min(1.0, unique_share), int(counts.counts.max()), counts.shift > 0,
                    2.0 ** -counts.shift)


# --------------------------------------------------------------------------- both keys, fed piece by piece


@dataclass
class DuplicateCounter:
    """Exact and near keys of every document of one stream (a file range, a file, a corpus)."""

    exact: HashCounts = field(default_factory=HashCounts)
    near: HashCounts = field(default_factory=HashCounts)

    def add_documents(self, documents: list[str]) -> None:
        """Documents as the reader yields them (non-empty, stripped)."""
        if not documents:
            return
        encoded = [doc.encode("utf-8") for doc in documents]
        sizes = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
        self.exact.add(hashes_of(encoded), sizes)
        near = normalise("\x00".join(documents), b"\x00").split(b"\x00")
        self.near.add(hashes_of(near), sizes)

    def add_line_piece(self, raw: bytes, text: str, newlines: np.ndarray, spaces: bytes) -> None:
        """A chunk of a one-document-per-line file (``raw``, its decoded ``text`` and the byte positions of its
        newlines) whose only whitespace is the ASCII ``spaces``: the documents are its non-empty stripped
        lines. The near keys come from one pass over the whole chunk; only lines that may hold a URL or
        @mention go through the regex, one by one."""
        lines = list(map(methodcaller("strip", spaces), raw.split(b"\n")))
        blank = spaces.decode("ascii")
        sizes = np.fromiter(map(len, map(methodcaller("strip", blank), text.split("\n"))), dtype=np.int64,
                            count=len(lines))
        present = sizes > 0
        if not present.any():
            return
        near = raw.lower().translate(None, _DROP[b"\n"]).split(b"\n")
        for index in _lines_with_hints(raw, newlines):
            near[index] = near_key(lines[index].decode("utf-8"))
        self.exact.add(hashes_of(lines)[present], sizes[present])
        self.near.add(hashes_of(near)[present], sizes[present])

    def merge(self, other: Optional["DuplicateCounter"]) -> None:
        if other is not None:
            self.exact.merge(other.exact)
            self.near.merge(other.near)


def _lines_with_hints(raw: bytes, newlines: np.ndarray) -> set[int]:
    """Indexes of the lines of ``raw`` that contain '@', 'http' or 'www.'."""
    found: list[int] = []
    for hint in _URL_HINTS:
        at = raw.find(hint)
        while at >= 0:
            found.append(at)
            at = raw.find(hint, at + 1)
    return set(np.searchsorted(newlines, np.asarray(found, dtype=np.int64)).tolist()) if found else set()


def summarise(counter: DuplicateCounter, documents: int, characters: int,
              sample_docs: Optional[list[str]] = None) -> dict:
    """The figures `advise` reports and its size rules use; ``sample_docs`` (the measurement's random sample)
    supplies an example of the most repeated text."""
    exact, near = key_stats(counter.exact, documents), key_stats(counter.near, documents)
    example = None
    if sample_docs and exact.duplicate_documents:
        seen = hashes_of([doc.encode("utf-8") for doc in sample_docs])
        repeats = counter.exact.count_of(seen)
        best = int(np.argmax(repeats))
        if repeats[best] > 1:
            example = {"text": sample_docs[best][:120], "occurrences": int(repeats[best])}
    return {
        "exact_duplicate_documents": exact.duplicate_documents,
        "near_duplicate_documents": near.duplicate_documents,
        "unique_characters": round(characters * exact.unique_share),
        "near_unique_characters": round(characters * min(exact.unique_share, near.unique_share)),
        "most_repeated": exact.most_repeated,
        "example": example,
        "sampled": exact.sampled or near.sampled,
        "sampling_rate": min(exact.sampling_rate, near.sampling_rate),
        "definition": ("exact: identical text after stripping; near: identical after removing URLs and "
                       "@mentions, ASCII case, spaces and punctuation"),
    }


__all__ = ["CAPACITY", "DuplicateCounter", "HashCounts", "LEE_2022", "exact_key", "near_key", "normalise",
           "summarise"]
