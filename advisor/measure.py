"""Measure a corpus under a model's own tokenizer: the numbers every advised value cites.

One streaming pass counts characters, bytes, documents and words exactly and keeps a seeded uniform random
sample of documents (bottom-k of random keys, so any prefix of it in key order is itself a uniform sample).
The sample is tokenized in batches until the 95% interval of tokens/char — a ratio estimator over
documents (cluster sampling), with its standard error — is within ±1%; small corpora and ``full=True``
are tokenized completely, exactly.
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import regex

from babeltune.advisor.corpus import (
    CorpusSpec, FileProblem, bad_file_error, check_file, corpus_files, documents_in_file,
    empty_corpus_error, iter_text_chunks,
)
from babeltune.advisor.scripts import mostly_space_delimited, script_mix
from babeltune.advisor.types import Measurements, SkippedFile

if TYPE_CHECKING:
    from babeltune.advisor.profiles import LangProfile
    from babeltune.models.types import TextTokenizer

EXACT_BELOW_CHARS = 2_000_000   # below this, tokenizing everything takes about a second: always exact
TARGET_HALF_WIDTH = 0.01        # relative half-width of the 95% interval of tokens/char
Z95 = 1.959964
MIN_SAMPLE_DOCS = 2_000         # enough documents for stable p99 lengths and a trustworthy interval
POOL_DOCS = 100_000             # most sampled documents kept; ~38k suffice even for very mixed corpora
POOL_CHARS = 64_000_000         # and at most this much text, so memory stays bounded for long documents
TOKENIZE_BATCH = 2_000
WORD_SAMPLE = 20_000            # words tokenized one by one for the multi-token share
LANGID_SAMPLE = 1_000
LANGID_CHARS = 2_000            # py3langid needs no more than this per document
SCRIPT_SAMPLE_CHARS = 2_000_000
LENGTHS_KEPT = 100_000          # document token lengths kept for histograms/truncation shares

# Bytes that start a non-ASCII whitespace character (U+0085, U+00A0, U+1680, U+2000-200A, U+2028/9,
# U+202F, U+205F, U+3000): pieces without them can be counted on bytes alone.
_NON_ASCII_SPACE = re.compile(rb"\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80")
# Byte classes: "\n" stays, the other characters str.isspace() calls ASCII whitespace become " ", and
# every other byte (including all bytes of multi-byte characters) becomes "a".
_CLASS_TABLE = bytes(
    0x0A if b == 0x0A else 0x20 if b in b" \t\r\x0b\x0c\x1c\x1d\x1e\x1f" else 0x61 for b in range(256))
_WORD_PART = regex.compile(r"[\p{L}\p{M}]+")


# --------------------------------------------------------------------------- counting pass


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


class SamplePool:
    """Bottom-k sample: every document gets a seeded uniform key; the documents with the smallest keys are
    kept. Sorted by key, any prefix is a uniform random sample without replacement."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.threshold = 1.0
        self.keys: list[float] = []
        self.docs: list[str] = []
        self.files: list[int] = []
        self.chars = 0
        self.complete = True            # still holds every document seen

    def candidates(self, count: int) -> Iterable[tuple[int, float]]:
        """Draw keys for ``count`` documents; return (index, key) of those that may enter the pool."""
        keys = self.rng.random(count)
        picked = np.flatnonzero(keys < self.threshold)
        return zip(picked.tolist(), keys[picked].tolist())

    def add(self, key: float, doc: str, file_index: int) -> None:
        self.keys.append(key)
        self.docs.append(doc)
        self.files.append(file_index)
        self.chars += len(doc)
        if len(self.keys) > POOL_DOCS * 3 // 2 or self.chars > POOL_CHARS * 3 // 2:
            self._prune()

    def _prune(self) -> None:
        order = np.argsort(np.asarray(self.keys), kind="stable")
        keep, chars = [], 0
        for i in order[:POOL_DOCS].tolist():
            if chars + len(self.docs[i]) > POOL_CHARS and keep:
                break
            keep.append(i)
            chars += len(self.docs[i])
        self.complete = False
        self.threshold = self.keys[keep[-1]]
        self.keys = [self.keys[i] for i in keep]
        self.docs = [self.docs[i] for i in keep]
        self.files = [self.files[i] for i in keep]
        self.chars = chars

    def drop_file(self, file_index: int) -> None:
        """Forget the documents of a file found bad halfway through."""
        kept = [i for i, f in enumerate(self.files) if f != file_index]
        self.keys = [self.keys[i] for i in kept]
        self.docs = [self.docs[i] for i in kept]
        self.files = [self.files[i] for i in kept]
        self.chars = sum(map(len, self.docs))

    def ordered_documents(self) -> list[str]:
        return [self.docs[i] for i in np.argsort(np.asarray(self.keys), kind="stable").tolist()]


def scan_line_file(path: Path, pool: SamplePool, file_index: int) -> Counts:
    """Counts for a one-document-per-line .txt file, computed on large byte chunks (no per-character
    Python), feeding the sample pool. Raises FileProblem for binary/undecodable content."""
    counts = Counts()
    for _, raw, text in iter_text_chunks(path):
        if _NON_ASCII_SPACE.search(raw) is None:
            lengths = _count_piece_bytes(raw, text, counts)
            lines = None
        else:
            lines = list(map(str.strip, text.split("\n")))
            lengths = _count_piece_text(lines, counts)
        raw_lines = None
        for index, key in pool.candidates(len(lengths)):
            if lengths[index]:
                if lines is None:
                    raw_lines = raw_lines or raw.split(b"\n")
                    doc = raw_lines[index].decode("utf-8").strip()
                else:
                    doc = lines[index]
                pool.add(key, doc, file_index)
    return counts


def _count_piece_bytes(raw: bytes, text: str, counts: Counts) -> list[int]:
    """Fast path (only ASCII whitespace): classify bytes with translate, strip lines as bytes."""
    classes = raw.translate(_CLASS_TABLE)
    byte_lengths = list(map(len, map(bytes.strip, classes.split(b"\n"))))
    doc_bytes = sum(byte_lengths)
    # Continuation bytes (len(raw) - len(text)) all belong to non-space characters inside documents.
    counts.characters += doc_bytes - (len(raw) - len(text))
    counts.bytes += doc_bytes
    counts.documents += len(byte_lengths) - byte_lengths.count(0)
    counts.words += classes.count(b" a") + classes.count(b"\na") + (classes[:1] == b"a")
    return byte_lengths


def _count_piece_text(lines: list[str], counts: Counts) -> list[int]:
    """Exact path for pieces holding non-ASCII whitespace: per line, but still without per-char loops."""
    lengths = list(map(len, lines))
    counts.characters += sum(lengths)
    counts.bytes += sum(map(len, map(str.encode, lines)))
    counts.documents += len(lengths) - lengths.count(0)
    counts.words += sum(map(len, map(str.split, lines)))
    return lengths


def scan_documents(path: Path, spec: CorpusSpec, pool: SamplePool, file_index: int) -> Counts:
    """Counts for any other file type, document by document (in batches for the key draws)."""
    counts = Counts()
    batch: list[str] = []
    for doc in documents_in_file(path, spec):
        batch.append(doc)
        if len(batch) >= 4096:
            _count_batch(batch, counts, pool, file_index)
            batch = []
    if batch:
        _count_batch(batch, counts, pool, file_index)
    return counts


def _count_batch(batch: list[str], counts: Counts, pool: SamplePool, file_index: int) -> None:
    counts.documents += len(batch)
    counts.characters += sum(map(len, batch))
    counts.bytes += sum(map(len, map(str.encode, batch)))
    counts.words += sum(map(len, map(str.split, batch)))
    for index, key in pool.candidates(len(batch)):
        pool.add(key, batch[index], file_index)


def count_corpus(spec: CorpusSpec, seed: int, skipped: list[SkippedFile]) -> tuple[Counts, SamplePool, list[Path]]:
    """One pass over the corpus: exact counts, the random sample, and the files that were read."""
    totals, pool, good = Counts(), SamplePool(seed), []
    for index, path in enumerate(corpus_files(spec, skipped)):
        try:
            if path.suffix.lower() == ".txt" and spec.doc_split == "line":
                counts = scan_line_file(path, pool, index)
            else:
                problem = check_file(path)
                if problem is not None:
                    raise FileProblem(problem.reason, problem.offset)
                counts = scan_documents(path, spec, pool, index)
        except FileProblem as problem:
            pool.drop_file(index)
            skip = SkippedFile(str(path), problem.reason, problem.offset)
            if spec.strict:
                raise bad_file_error(skip) from None
            skipped.append(skip)
            continue
        totals.add(counts)
        good.append(path)
    if totals.documents == 0:
        raise empty_corpus_error(spec, skipped)
    return totals, pool, good


# --------------------------------------------------------------------------- tokens


@dataclass
class TokenSample:
    tokens: list[int] = field(default_factory=list)      # per sampled document
    chars: list[int] = field(default_factory=list)

    def extend(self, docs: list[str], tokenizer: "TextTokenizer") -> None:
        self.tokens.extend(map(len, tokenizer.encode_batch(docs)))
        self.chars.extend(map(len, docs))


def ratio_interval(sample: TokenSample, population_docs: int, population_chars: int) -> tuple[float, float]:
    """Ratio estimate of tokens/char and the half-width of its 95% interval.

    Documents are clusters of characters, so the variance comes from the per-document residuals
    t_i - R c_i (Cochran 1977, ch. 6), with the finite-population correction; zero when all are sampled."""
    tokens = np.asarray(sample.tokens, dtype=np.float64)
    chars = np.asarray(sample.chars, dtype=np.float64)
    ratio = float(tokens.sum() / chars.sum())
    n = len(tokens)
    if n >= population_docs or n < 2:
        return ratio, 0.0 if n >= population_docs else math.inf
    residuals = tokens - ratio * chars
    mean_chars = population_chars / population_docs
    variance = (1 - n / population_docs) * float(residuals @ residuals) / (n - 1) / (n * mean_chars**2)
    return ratio, Z95 * math.sqrt(variance)


def tokenize_sample(docs: list[str], tokenizer: "TextTokenizer", counts: Counts) -> TokenSample:
    """Tokenize sampled documents batch by batch until the interval is narrow enough (or all are done)."""
    sample = TokenSample()
    for start in range(0, len(docs), TOKENIZE_BATCH):
        sample.extend(docs[start:start + TOKENIZE_BATCH], tokenizer)
        if len(sample.tokens) >= min(MIN_SAMPLE_DOCS, counts.documents):
            ratio, half = ratio_interval(sample, counts.documents, counts.characters)
            if half <= TARGET_HALF_WIDTH * ratio:
                break
    return sample


def tokenize_all(files: list[Path], spec: CorpusSpec, tokenizer: "TextTokenizer") -> TokenSample:
    """Exact: every document of every readable file, streamed in batches."""
    sample = TokenSample()
    batch: list[str] = []
    for path in files:
        for doc in documents_in_file(path, spec):
            batch.append(doc)
            if len(batch) >= TOKENIZE_BATCH:
                sample.extend(batch, tokenizer)
                batch = []
    if batch:
        sample.extend(batch, tokenizer)
    return sample


def length_percentiles(lengths: list[int]) -> dict[str, int]:
    values = np.asarray(lengths)
    out = {f"p{q}": int(np.percentile(values, q, method="higher")) for q in (50, 90, 95, 99)}
    out["max"] = int(values.max())
    return out


def word_split_share(docs: list[str], tokenizer: "TextTokenizer") -> Optional[float]:
    """Share of running words (letter runs) that the tokenizer cuts into two or more tokens.

    A word is tokenized both bare and with its leading space and the shorter count is used:
    byte-level BPEs fold the space into the word ("Ġword"), SentencePiece adds its own "▁"."""
    words: Counter = Counter()
    taken = 0
    for doc in docs:
        found = _WORD_PART.findall(doc)
        words.update(found)
        taken += len(found)
        if taken >= WORD_SAMPLE:
            break
    if not words:
        return None
    unique = list(words)
    bare = tokenizer.encode_batch(unique)
    spaced = tokenizer.encode_batch([" " + w for w in unique])
    split = sum(words[w] for w, a, b in zip(unique, bare, spaced) if min(len(a), len(b)) >= 2)
    return round(split / sum(words.values()), 4)


# --------------------------------------------------------------------------- language


def language_id(docs: list[str], expected: Optional[str]) -> dict[str, Any]:
    """py3langid on a random sample of documents: top language, agreement with the expected one."""
    import py3langid

    sample = [doc[:LANGID_CHARS] for doc in docs[:LANGID_SAMPLE]]
    votes = Counter(py3langid.classify(doc)[0] for doc in sample)
    total = sum(votes.values())
    top = votes.most_common(1)[0][0] if votes else None
    agreement = round(votes[expected] / total, 4) if expected and total else None
    return {
        "expected": expected,
        "top": top,
        "agreement": agreement,
        "sample": total,
        "distribution": {lang: round(n / total, 4) for lang, n in votes.most_common(5)},
        "mismatch": bool(expected and top != expected and (agreement or 0.0) < 0.5),
    }


def reference_premium(tokenizer: "TextTokenizer", profile: Optional["LangProfile"]) -> Optional[float]:
    """Tokens on the profile's parallel reference text divided by tokens on the same text in English
    (Petrov et al. 2023's tokenizer premium); None when the language ships no reference text."""
    if profile is None:
        return None
    try:
        from babeltune.advisor.profiles import english_reference_lines, reference_lines
    except ImportError:  # language profiles not installed yet
        return None
    lines = reference_lines(profile)
    english = english_reference_lines()
    if not lines or not english:
        return None
    own = sum(map(len, tokenizer.encode_batch(list(lines))))
    base = sum(map(len, tokenizer.encode_batch(list(english))))
    return round(own / base, 4) if base else None


# --------------------------------------------------------------------------- entry point


def measure_corpus(spec: CorpusSpec, tokenizer: "TextTokenizer", profile: Optional["LangProfile"] = None,
                   *, full: bool = False, seed: int = 0) -> Measurements:
    """Measure ``spec`` under ``tokenizer``. Exact counts always; tokens exact for small corpora and with
    ``full``, else estimated from a random document sample to ±1% (95% interval reported)."""
    skipped: list[SkippedFile] = []
    counts, pool, files = count_corpus(spec, seed, skipped)
    sample_docs = pool.ordered_documents()
    exact = full or counts.characters <= EXACT_BELOW_CHARS
    if exact and not (pool.complete and len(sample_docs) == counts.documents):
        tokens = tokenize_all(files, spec, tokenizer)
    elif exact:
        tokens = TokenSample()
        for start in range(0, len(sample_docs), TOKENIZE_BATCH):
            tokens.extend(sample_docs[start:start + TOKENIZE_BATCH], tokenizer)
    else:
        tokens = tokenize_sample(sample_docs, tokenizer, counts)
    return _assemble(spec, tokenizer, profile, counts, files, skipped, sample_docs, tokens, seed)


def _assemble(spec, tokenizer, profile, counts: Counts, files, skipped, sample_docs, tokens: TokenSample,
              seed: int) -> Measurements:
    ratio, half = ratio_interval(tokens, counts.documents, counts.characters)
    all_done = len(tokens.tokens) >= counts.documents
    total_tokens = sum(tokens.tokens) if all_done else round(ratio * counts.characters)
    mix = script_mix(_prefix_by_chars(sample_docs, SCRIPT_SAMPLE_CHARS))
    spaced = profile.space_delimited if profile is not None else mostly_space_delimited(mix)
    words = counts.words if spaced else None
    lengths = tokens.tokens
    kept = lengths if len(lengths) <= LENGTHS_KEPT else \
        np.random.default_rng(seed).choice(np.asarray(lengths), LENGTHS_KEPT, replace=False).tolist()
    premium = reference_premium(tokenizer, profile)
    return Measurements(
        tokenizer=getattr(tokenizer, "name", type(tokenizer).__name__),
        files=len(files),
        documents=counts.documents,
        characters=counts.characters,
        bytes=counts.bytes,
        words=words,
        tokens=int(total_tokens),
        tokens_exact=all_done,
        tokens_per_char=round(ratio, 6),
        tokens_per_char_ci95=(round(ratio - half, 6), round(ratio + half, 6)),
        sampled_documents=len(lengths),
        sampled_characters=int(sum(tokens.chars)),
        tokens_per_word=round(total_tokens / words, 4) if words else None,
        multi_token_word_share=word_split_share(sample_docs, tokenizer) if words else None,
        doc_tokens_percentiles=length_percentiles(lengths),
        doc_tokens_mean=round(float(np.mean(lengths)), 2),
        script_mix=mix,
        langid=language_id(sample_docs, getattr(profile, "langid_code", None)),
        premium_vs_english=premium,
        premium_reference=getattr(profile, "reference", None) if premium is not None else None,
        skipped=skipped,
        doc_token_lengths=list(map(int, kept)),
    )


def _prefix_by_chars(docs: list[str], limit: int) -> list[str]:
    out, total = [], 0
    for doc in docs:
        if total >= limit:
            break
        out.append(doc)
        total += len(doc)
    return out
