"""What a vocabulary extension would buy: train a candidate tokenizer on the corpus in the base tokenizer's own
family, keep the most useful merges the base vocabulary lacks, and measure tokens per character before and after.

The extension is built so that nothing the base tokenizer already does changes (babeltune.trainer.vocab applies it):
new merges are appended after the base's merges (lowest priority) and new pieces get ids after every existing id,
so an existing token keeps its id and text that the new merges never touch keeps its exact ids. They are real
merges of the model, not "added tokens", so they go through the same normalisation and pre-tokenisation.

One pre-tokeniser detail decides how much byte-level BPE bases (GPT-2 style, e.g. SmolLM2) can gain: their
split regex ``?\\p{L}+`` cuts a word at every combining mark (\\p{M}: Devanagari vowel signs, the virama), so no
merge can span a whole Marathi word. For the scripts whose marks the corpus uses, the extension lets marks join
letters (``[\\p{L}\\p{Devanagari}]+``); text without those scripts splits exactly as before (tested on English
and on other scripts). Measured on MahaSent with SmolLM2: 1.13 tokens/char before, 0.70 at best with the
base's regex, 0.46 with 4k merges once marks join letters.

Supported families: byte-level BPE (ByteLevel pre-tokenizer) and SentencePiece-style BPE (``▁`` for spaces, byte
fallback; Gemma's tokenizer.json). Anything else (WordPiece, Unigram) is reported as unsupported.
"""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from babeltune.errors import BabeltuneError

SIZES = (1_000, 4_000, 16_000)          # extension sizes `advise` measures
VOCAB_SAMPLE_CHARS = 5_000_000          # characters read to train the candidate (~11 s per 0.7M chars measured)
HELDOUT_EVERY = 10                      # every 10th sampled document (by hash) measures; the rest train
MIN_PAIR_FREQUENCY = 2                  # a merge seen once in the sample is noise, not a piece of the language
MIN_MARK_SHARE = 0.05                   # a script joins when it holds >= 5% of the marked letters (not a stray quote)
CANDIDATE_SLACK = 3                     # train this many times the merges wanted: many are already in the base
GPT2_LETTERS = " ?\\p{L}+"
GPT2_OTHERS = " ?[^\\s\\p{L}\\p{N}]+"
GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
SPIECE_SPACE = "\u2581"


@dataclass
class ExtensionSize:
    new_tokens: int                   # merges/pieces appended (may be fewer than asked: what the corpus supports)
    tokens_per_char: float            # on held-out sampled text, with the extension
    speedup: float                    # base tokens/char / extended tokens/char: text per token, per step
    embedding_rows: int               # new rows to learn: input rows, plus output rows when untied


@dataclass
class VocabReport:
    family: Optional[str]             # "byte-level-bpe" | "sentencepiece-bpe" | None (unsupported)
    why: str                          # what was measured, or why nothing could be
    base_tokens_per_char: float = 0.0
    sizes: list[ExtensionSize] = field(default_factory=list)
    unique_characters: int = 0        # distinct characters in the sample (the alphabet the language needs)
    sample_documents: int = 0
    sample_characters: int = 0
    heldout_characters: int = 0
    joined_scripts: list[str] = field(default_factory=list)   # scripts whose marks the extension joins to letters

    def to_dict(self) -> dict:
        return asdict(self)

    def best(self) -> Optional[ExtensionSize]:
        return min(self.sizes, key=lambda s: s.tokens_per_char) if self.sizes else None


def tokenizer_family(spec: dict) -> Optional[str]:
    """The family of a tokenizer.json (as a dict), or None when babeltune cannot extend it."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("merges"), list):
        return None
    if "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return "byte-level-bpe"
    if SPIECE_SPACE in json.dumps(spec.get("normalizer"), ensure_ascii=False) or "Metaspace" in json.dumps(spec.get("pre_tokenizer")):
        return "sentencepiece-bpe"
    return None


def marked_scripts(texts: Iterable[str]) -> list[str]:
    """Scripts whose letters carry combining marks in ``texts`` (marks that GPT-2's regex splits off)."""
    import regex

    from babeltune.languages.scripts import script_of

    from collections import Counter

    found: Counter = Counter()
    for text in texts:
        found.update(script_of(match.group(1)) for match in regex.finditer(r"(\p{L})\p{M}", text))
    total = sum(found.values())
    return sorted(name for name, n in found.items()
                  if n >= MIN_MARK_SHARE * total and name not in ("Common", "Inherited", "Unknown", "Latin"))


def joined_pattern(scripts: list[str]) -> str:
    """GPT-2's split regex with the marks of ``scripts`` joining letters (unchanged when ``scripts`` is empty)."""
    extra = "".join(f"\\p{{{name}}}" for name in scripts)
    return (GPT2_PATTERN.replace(GPT2_LETTERS, f" ?[\\p{{L}}{extra}]+")
            .replace(GPT2_OTHERS, f" ?[^\\s\\p{{L}}\\p{{N}}{extra}]+"))


def _split_then_bytes(node: dict, pattern: str) -> list[dict]:
    """A regex-using ByteLevel pre-tokenizer as Split(pattern) + ByteLevel without its own regex."""
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    return [split, {**node, "use_regex": False}]


def _is_regex_bytelevel(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "ByteLevel" and node.get("use_regex", True)


def _replace_bytelevel_regex(node: Any, pattern: str) -> Any:
    """A copy of a pre_tokenizer node whose regex-using ByteLevel splits by ``pattern`` instead."""
    is_bytes = _is_regex_bytelevel
    if isinstance(node, dict) and node.get("type") == "Sequence":
        parts: list = []
        for child in node.get("pretokenizers", []):
            parts.extend(_split_then_bytes(child, pattern) if is_bytes(child) else [_replace_bytelevel_regex(child, pattern)])
        return {**node, "pretokenizers": parts}
    if is_bytes(node):
        return {"type": "Sequence", "pretokenizers": _split_then_bytes(node, pattern)}
    return node


def with_joined_marks(spec: dict, scripts: list[str]) -> dict:
    """``spec`` with the byte-level split regex letting the marks of ``scripts`` join letters (a copy)."""
    out = dict(spec)      # shallow: only the pre_tokenizer changes (a deep copy of a 262k vocabulary takes seconds)
    if scripts and tokenizer_family(spec) == "byte-level-bpe":
        out["pre_tokenizer"] = _replace_bytelevel_regex(copy.deepcopy(spec["pre_tokenizer"]), joined_pattern(scripts))
    return out


def candidate_merges(spec: dict, texts: list[str], wanted: int) -> list[tuple[str, str]]:
    """Train a BPE tokenizer of the base's family on ``texts`` (HF tokenizers) and return its merges in order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    family = tokenizer_family(spec)
    empty = {**spec, "model": {"type": "BPE", "vocab": {}, "merges": []}, "added_tokens": []}
    base = Tokenizer.from_str(json.dumps(empty))        # its normalizer and pre-tokenizer, without the vocabulary
    candidate = Tokenizer(models.BPE())
    candidate.normalizer = base.normalizer
    if family == "byte-level-bpe":
        candidate.pre_tokenizer = base.pre_tokenizer
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:   # SentencePiece-style: pieces start at "▁" (a space) and never cross one
        from tokenizers import Regex

        candidate.pre_tokenizer = pre_tokenizers.Split(Regex(SPIECE_SPACE), behavior="merged_with_next")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + wanted * CANDIDATE_SLACK, min_frequency=MIN_PAIR_FREQUENCY,
                                  initial_alphabet=alphabet, show_progress=False)
    candidate.train_from_iterator(texts, trainer)
    merges = json.loads(candidate.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def next_free_id(spec: dict) -> int:
    ids = list(spec["model"]["vocab"].values()) + [token["id"] for token in spec.get("added_tokens", [])]
    return max(ids) + 1


def extend_spec(spec: dict, merges: list[tuple[str, str]], count: int) -> tuple[dict, list[str]]:
    """A copy of ``spec`` with up to ``count`` of ``merges`` appended (those whose product the base lacks and whose
    parts it can already form), and the new pieces in id order."""
    model = {**spec["model"], "vocab": dict(spec["model"]["vocab"]), "merges": list(spec["model"]["merges"])}
    out = {**spec, "model": model}      # the base's entries are never changed, only appended to
    vocab, appended = model["vocab"], model["merges"]
    as_strings = bool(appended) and isinstance(appended[0], str)
    new_id, added = next_free_id(spec), []
    for left, right in merges:
        if len(added) >= count:
            break
        piece = left + right
        if piece in vocab or left not in vocab or right not in vocab:
            continue
        vocab[piece] = new_id
        appended.append(f"{left} {right}" if as_strings else [left, right])
        added.append(piece)
        new_id += 1
    return out, added


def tokens_per_char(spec: dict, texts: list[str]) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(json.dumps(spec))
    chars = sum(map(len, texts)) or 1
    return sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)) / chars


def split_sample(documents: list[str]) -> tuple[list[str], list[str]]:
    """(train, held-out): every HELDOUT_EVERY-th document by a stable hash of its text measures."""
    train, heldout = [], []
    for doc in documents:
        (heldout if zlib.crc32(doc.encode("utf-8")) % HELDOUT_EVERY == 0 else train).append(doc)
    if not heldout:
        heldout = train[-max(1, len(train) // HELDOUT_EVERY):]
        train = train[:len(train) - len(heldout)] or heldout
    return train, heldout


def build_extension(spec: dict, texts: list[str], count: int) -> tuple[dict, list[str], list[str]]:
    """The extended tokenizer.json for ``count`` new pieces trained on ``texts``: (spec, new pieces, joined scripts)."""
    scripts = marked_scripts(texts) if tokenizer_family(spec) == "byte-level-bpe" else []
    base = with_joined_marks(spec, scripts)
    merges = candidate_merges(base, texts, count)
    extended, added = extend_spec(base, merges, count)
    return extended, added, scripts


def measure_extension(spec: dict, documents: list[str], *, tied: bool, sizes: Iterable[int] = SIZES) -> VocabReport:
    """Tokens/char of held-out sampled text under the base tokenizer and extended by each of ``sizes``."""
    family = tokenizer_family(spec)
    unique = len(set("".join(documents)))
    if family is None:
        kind = (spec.get("model") or {}).get("type", "unknown")
        return VocabReport(None, f"a {kind} tokenizer: babeltune extends byte-level or SentencePiece-style BPE only",
                           unique_characters=unique, sample_documents=len(documents))
    train, heldout = split_sample([d for d in documents if d.strip()])
    sizes = sorted(set(sizes))
    scripts = marked_scripts(train) if family == "byte-level-bpe" else []
    base = with_joined_marks(spec, scripts)
    merges = candidate_merges(base, train, max(sizes))
    before = tokens_per_char(spec, heldout)
    report = VocabReport(family, f"candidate {family} trained on {sum(map(len, train)):,} sampled characters",
                         before, unique_characters=unique, sample_documents=len(documents),
                         sample_characters=sum(map(len, documents)), heldout_characters=sum(map(len, heldout)),
                         joined_scripts=scripts)
    for size in sizes:
        extended, added = extend_spec(base, merges, size)
        if report.sizes and len(added) == report.sizes[-1].new_tokens:
            break   # the corpus supports no more merges than the last size already holds
        after = tokens_per_char(extended, heldout)
        report.sizes.append(ExtensionSize(len(added), after, before / after if after else 1.0,
                                          len(added) * (1 if tied else 2)))
    return report


def sample_documents(corpus, limit_chars: int = VOCAB_SAMPLE_CHARS) -> list[str]:
    """The corpus's first ``limit_chars`` characters of documents (skips were reported when it was measured)."""
    from babeltune.corpus.reader import iter_documents

    docs, total = [], 0
    for doc in iter_documents(corpus, []):
        docs.append(doc)
        total += len(doc)
        if total >= limit_chars:
            break
    return docs


def load_spec(source: str) -> Optional[dict]:
    """tokenizer.json of a model folder (or the file itself) as a dict, or None when there is none."""
    from pathlib import Path

    path = Path(source)
    path = path / "tokenizer.json" if path.is_dir() else path
    if path.name != "tokenizer.json" or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def tokenizer_source(model: str, tokenizer: Optional[str]) -> Optional[str]:
    """Where the tokenizer that `train` would extend lives: the --tokenizer folder/file, else the model's folder."""
    from pathlib import Path

    if tokenizer:
        return tokenizer if Path(tokenizer).exists() else None
    if Path(model).is_dir():
        return model
    try:
        from babeltune.models.resolve import resolve_model_dir

        return str(resolve_model_dir(model))
    except (BabeltuneError, OSError):   # a built-in not pulled or a GGUF not converted: nothing to extend here
        return None


def measure_for_advice(model: str, tokenizer: Optional[str], corpus, *, tied: bool, echo=lambda line: None) -> dict:
    """VocabReport.to_dict() for `advise` ({} when the tokenizer has no tokenizer.json to extend)."""
    source = tokenizer_source(model, tokenizer)
    spec = load_spec(source) if source else None
    if spec is None:
        return {}
    echo("measuring what a vocabulary extension would buy ...")
    return measure_extension(spec, sample_documents(corpus), tied=tied).to_dict()
