"""Contracts inside the advisor: what measurement produces and what each rule returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from babeltune.corpus.skipped import SkippedFile  # noqa: F401 - part of Measurements' contract


@dataclass
class Measurements:
    """The corpus, measured under one tokenizer. Every rule cites numbers from here."""

    tokenizer: str
    files: int
    documents: int
    characters: int
    bytes: int
    words: Optional[int]                       # None for scripts without spaces between words
    tokens: int                                # exact when tokens_exact, else characters x tokens/char
    tokens_exact: bool
    tokens_per_char: float
    tokens_per_char_ci95: tuple[float, float]  # equals (tpc, tpc) when exact
    sampled_documents: int
    sampled_characters: int
    tokens_per_word: Optional[float] = None    # fertility
    multi_token_word_share: Optional[float] = None
    doc_tokens_percentiles: dict[str, int] = field(default_factory=dict)  # p50 p90 p95 p99 max
    doc_tokens_mean: float = 0.0
    script_mix: dict[str, float] = field(default_factory=dict)            # script name -> share of letters
    langid: dict[str, Any] = field(default_factory=dict)                 # expected, top, agreement, sample, distribution
    premium_vs_english: Optional[float] = None  # tokens on parallel reference text in LANG / in English
    premium_reference: Optional[str] = None
    reference_chars_vs_english: Optional[float] = None  # characters of the parallel reference text / English's
    skipped: list[SkippedFile] = field(default_factory=list)
    # exact/near duplicate documents and the unique characters left without them (babeltune.corpus.duplicates)
    duplicates: dict[str, Any] = field(default_factory=dict)
    # documents holding encoding damage, found on the sample (babeltune.advisor.mojibake)
    mojibake: dict[str, Any] = field(default_factory=dict)
    doc_token_lengths: list[int] = field(default_factory=list, repr=False)  # sampled, for histograms/truncation
    # sft: examples rendered as train feeds them (babeltune.advisor.sft.ExampleLengths), and its summary
    example_lengths: Any = field(default=None, repr=False)
    sft_examples: dict[str, Any] = field(default_factory=dict)
    sample_documents: list[str] = field(default_factory=list, repr=False)   # a uniform sample, for comparisons
    # what extending the tokenizer would buy (babeltune.vocab.VocabReport.to_dict()); {} = not measured
    vocab_extension: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        lengths, self.example_lengths = self.example_lengths, None
        try:
            out = asdict(self)
        finally:
            self.example_lengths = lengths
        for internal in ("doc_token_lengths", "example_lengths", "sample_documents"):
            out.pop(internal)
        out["tokens_per_char_ci95"] = list(self.tokens_per_char_ci95)
        return out

    def truncated_share(self, max_seq_length: int) -> float:
        """Share of (sampled) documents longer than max_seq_length tokens."""
        if not self.doc_token_lengths:
            return 0.0
        return sum(1 for n in self.doc_token_lengths if n > max_seq_length) / len(self.doc_token_lengths)


@dataclass
class Decision:
    """One advised value with its one-line reason (citing the measured number) and its evidence."""

    value: Any
    reason: str
    evidence: list[str] = field(default_factory=list)   # citations, e.g. "Biderman et al. 2024, LoRA Learns Less and Forgets Less"

    def to_dict(self) -> dict:
        return {"value": self.value, "reason": self.reason, "evidence": list(self.evidence)}
