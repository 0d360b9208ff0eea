"""Measure a corpus under a model's own tokenizer: the numbers every advised value cites.

One streaming pass counts characters, bytes, documents and words exactly and keeps a seeded uniform random
sample of documents (bottom-k of random keys, so any prefix of it in key order is itself a uniform sample).
The sample is tokenized in batches until the 95% interval of tokens/char — a ratio estimator over
documents (cluster sampling), with its standard error — is within ±1%; small corpora and ``full=True``
are tokenized completely, exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import regex

from babeltune.corpus.reader import (CorpusSpec, bad_file_error, check_listing, corpus_files, documents_in_file,
                                      empty_corpus_error)
from babeltune.corpus.readlog import ReadTally, batches
from babeltune.corpus.duplicates import DuplicateCounter, summarise
from babeltune.advisor.mojibake import find_mojibake
from babeltune.languages.scripts import mostly_space_delimited, script_mix
from babeltune.advisor.textscan import Counts, DocumentReader, SampleFolder, SamplePool, ScanResult, scan_files
from babeltune.advisor.types import Measurements, SkippedFile

if TYPE_CHECKING:
    from babeltune.languages.profiles import LangProfile
    from babeltune.models.types import TextTokenizer

EXACT_BELOW_CHARS = 2_000_000   # below this, tokenizing everything takes about a second: always exact
TARGET_HALF_WIDTH = 0.01        # relative half-width of the 95% interval of tokens/char
Z95 = 1.959964
MIN_SAMPLE_DOCS = 2_000         # enough documents for stable p99 lengths and a trustworthy interval
MIN_LONG_DOCS = 30              # ... or this many when they hold EXACT_BELOW_CHARS (very long documents)
TOKENIZE_BATCH = 2_000
WORD_SAMPLE = 20_000            # words tokenized one by one for the multi-token share
LANGID_SAMPLE = 1_000
LANGID_CHARS = 2_000            # py3langid needs no more than this per document
SCRIPT_SAMPLE_CHARS = 2_000_000
LENGTHS_KEPT = 100_000          # document token lengths kept for histograms/truncation shares

_WORD_PART = regex.compile(r"[\p{L}\p{M}]+")


# --------------------------------------------------------------------------- counting pass


@dataclass
class CorpusScan:
    counts: Counts
    pool: SamplePool
    files: list[Path]
    duplicates: DuplicateCounter


def count_corpus(spec: CorpusSpec, seed: int, skipped: list[SkippedFile]) -> tuple[Counts, SamplePool, list[Path]]:
    """One pass over the corpus: exact counts, the random sample, and the files that were read."""
    scan = scan_corpus(spec, seed, skipped)
    return scan.counts, scan.pool, scan.files


def scan_corpus(spec: CorpusSpec, seed: int, skipped: list[SkippedFile],
                reader: Optional[DocumentReader] = None) -> CorpusScan:
    """One pass over the corpus: exact counts, the random sample, duplicate counts and the files read."""
    files = corpus_files(spec, skipped)
    check_listing(spec, skipped)
    totals, sample, good, reports = Counts(), SampleFolder(), [], []     # reports: (file index, entries)
    duplicates = DuplicateCounter()
    group: list[ScanResult] = []
    for result in chain(scan_files(files, spec, seed, reader=reader), [None]):   # a file's results arrive together
        if group and (result is None or result.file_index != group[0].file_index):
            problem = _first_problem(group)
            if problem is None:
                tally = ReadTally()
                for part in group:
                    totals.add(part.counts)
                    tally.merge(part.tally)      # ranges in file order: line numbers placed in the file
                    duplicates.merge(part.duplicates)
                sample.add([part.pool for part in group])
                good.append(group[0].file_index)
                reports.append((group[0].file_index, tally.entries(str(files[group[0].file_index]))))
            else:
                skip = SkippedFile(str(files[group[0].file_index]), *problem)
                if spec.strict:
                    raise bad_file_error(skip)
                reports.append((group[0].file_index, [skip]))
            group = []
        if result is not None:
            group.append(result)
    skipped.extend(skip for _, entries in sorted(reports, key=lambda item: item[0]) for skip in entries)
    if totals.documents == 0:
        raise empty_corpus_error(spec, skipped)
    return CorpusScan(totals, sample.result(), [files[i] for i in sorted(good)], duplicates)


def _first_problem(results: list[ScanResult]) -> Optional[tuple[str, Optional[int]]]:
    problems = [r.problem for r in results if r.problem is not None]
    return min(problems, key=lambda p: -1 if p[1] is None else p[1]) if problems else None


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
    for batch in batches(docs, TOKENIZE_BATCH):
        sample.extend(batch, tokenizer)
        long_enough = len(sample.tokens) >= MIN_LONG_DOCS and sum(sample.chars) >= EXACT_BELOW_CHARS
        if len(sample.tokens) >= min(MIN_SAMPLE_DOCS, counts.documents) or long_enough:
            ratio, half = ratio_interval(sample, counts.documents, counts.characters)
            if half <= TARGET_HALF_WIDTH * ratio:
                break
    return sample


def tokenize_all(files: list[Path], spec: CorpusSpec, tokenizer: "TextTokenizer",
                 reader: DocumentReader = documents_in_file) -> TokenSample:
    """Exact: every document of every readable file, streamed in batches."""
    sample = TokenSample()
    documents = (doc for path in files for doc in reader(path, spec, ReadTally(strict=spec.strict)))
    for batch in batches(documents, TOKENIZE_BATCH):
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
    from babeltune.languages.profiles import english_reference_lines, reference_lines

    lines = reference_lines(profile)
    english = english_reference_lines()
    if not lines or not english:
        return None
    own = sum(map(len, tokenizer.encode_batch(list(lines))))
    base = sum(map(len, tokenizer.encode_batch(list(english))))
    return round(own / base, 4) if base else None


def reference_char_ratio(profile: Optional["LangProfile"]) -> Optional[float]:
    """Characters of the profile's parallel reference text per character of the same text in English: how
    much text the language needs to say the same thing (tokenizer-free); None without reference text."""
    if getattr(profile, "reference", None) is None:
        return None
    from babeltune.languages.profiles import english_reference_lines, reference_lines

    lines, english = reference_lines(profile), english_reference_lines()
    if not lines or not english:
        return None
    return round(sum(map(len, lines)) / sum(map(len, english)), 4)


# --------------------------------------------------------------------------- entry point


def measure_corpus(spec: CorpusSpec, tokenizer: "TextTokenizer", profile: Optional["LangProfile"] = None,
                   *, full: bool = False, seed: int = 0, reader: Optional[DocumentReader] = None) -> Measurements:
    """Measure ``spec`` under ``tokenizer``. Exact counts always; tokens exact for small corpora and with
    ``full``, else estimated from a random document sample to ±1% (95% interval reported). ``reader``
    replaces how a file's documents are read (sft: the text of each record)."""
    skipped: list[SkippedFile] = []
    scan = scan_corpus(spec, seed, skipped, reader)
    counts, pool, files = scan.counts, scan.pool, scan.files
    sample_docs = pool.ordered_documents()
    exact = full or counts.characters <= EXACT_BELOW_CHARS
    if exact and not (pool.complete and len(sample_docs) == counts.documents):
        tokens = tokenize_all(files, spec, tokenizer, reader or documents_in_file)
    elif exact:
        tokens = TokenSample()
        for batch in batches(sample_docs, TOKENIZE_BATCH):
            tokens.extend(batch, tokenizer)
    else:
        tokens = tokenize_sample(sample_docs, tokenizer, counts)
    measured = _assemble(spec, tokenizer, profile, counts, files, skipped, sample_docs, tokens, seed)
    measured.duplicates = summarise(scan.duplicates, counts.documents, counts.characters, sample_docs)
    return measured


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
        reference_chars_vs_english=reference_char_ratio(profile),
        skipped=skipped,
        mojibake=find_mojibake(sample_docs, sampled=len(sample_docs) < counts.documents),
        sample_documents=sample_docs[:MIN_SAMPLE_DOCS],
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
