"""Contracts inside the advisor: what measurement produces, what each rule returns, and the decisions by key."""

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


class Decisions(dict):
    """Decisions by the dotted TrainConfig key they set ("training.learning_rate"), or by a bare name for the few
    that set no key ("batch_size", shown in the header). A decision may also be named by its key's last part
    ("learning_rate"), as rules read each other: the last parts are unique (tests/test_rules.py checks it), and a
    name two keys end in is refused rather than guessed."""

    def key(self, name: str) -> str:
        """The key ``name`` stands for: itself when held or dotted, else the one held key ending in ``.name``."""
        if dict.__contains__(self, name) or "." in name:
            return name
        matches = [key for key in self if key.rpartition(".")[2] == name]
        if len(matches) > 1:
            raise KeyError(f"{name!r} is the last part of {', '.join(matches)}: name the decision by its dotted key")
        return matches[0] if matches else name

    def __missing__(self, name: str) -> Decision:
        key = self.key(name)
        if key == name:
            raise KeyError(name)
        return dict.__getitem__(self, key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, self.key(name))

    def __setitem__(self, name: str, decision: Decision) -> None:
        dict.__setitem__(self, self.key(name), decision)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default
