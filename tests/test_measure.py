"""Measurement: exact counts equal brute force, the sampled tokens/char interval holds the exact value,
script mix, language-ID agreement (and a mismatch), premium vs English, bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from babeltune.corpus import reader as corpus_module
from babeltune.languages import profiles
from babeltune.advisor import measure, textscan
from babeltune.corpus.reader import CorpusSpec, iter_documents
from babeltune.advisor.measure import measure_corpus, reference_premium
from babeltune.languages.scripts import mostly_space_delimited, script_mix
from babeltune.errors import BabeltuneError

DATA = Path(__file__).parent / "data"
TEXT = DATA / "text"


class BpeTokenizer:
    """A TextTokenizer over a real byte-level BPE trained (in-test) on the shipped UD samples."""

    def __init__(self, vocab_size: int = 800):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train([str(p) for p in sorted(TEXT.glob("*.txt"))], trainer)
        self.tokenizer, self.name, self.vocab_size = tokenizer, "test-bpe", tokenizer.get_vocab_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]


@pytest.fixture(scope="module")
def tokenizer() -> BpeTokenizer:
    return BpeTokenizer()


def lines(name: str) -> list[str]:
    return [line for line in (TEXT / name).read_text("utf-8").splitlines() if line.strip()]


def profile(code: str):
    return profiles.get_profile(code)


def brute_force(spec: CorpusSpec, tokenizer) -> dict:
    docs = list(iter_documents(spec))
    lengths = [len(ids) for ids in tokenizer.encode_batch(docs)]
    return {"documents": len(docs), "characters": sum(map(len, docs)),
            "bytes": sum(len(d.encode("utf-8")) for d in docs), "words": sum(len(d.split()) for d in docs),
            "tokens": sum(lengths), "lengths": lengths}


# ------------------------------------------------------------------------------------------ exact counts


def test_exact_counts_on_marathi_equal_brute_force(tokenizer):
    spec = CorpusSpec(str(TEXT / "mr.txt"))
    m = measure_corpus(spec, tokenizer)
    truth = brute_force(spec, tokenizer)
    assert (m.documents, m.characters, m.bytes, m.words, m.tokens) == (
        truth["documents"], truth["characters"], truth["bytes"], truth["words"], truth["tokens"])
    assert m.tokens_exact and m.sampled_documents == m.documents and m.files == 1
    assert m.tokens_per_char == pytest.approx(truth["tokens"] / truth["characters"], abs=1e-6)
    assert m.tokens_per_char_ci95 == (m.tokens_per_char, m.tokens_per_char)
    assert m.tokens_per_word == pytest.approx(truth["tokens"] / truth["words"], abs=1e-4)
    assert m.doc_tokens_percentiles["max"] == max(truth["lengths"])
    assert m.doc_tokens_percentiles["p50"] == int(np.percentile(truth["lengths"], 50, method="higher"))
    assert sorted(m.doc_token_lengths) == sorted(truth["lengths"])
    assert 0 < m.multi_token_word_share <= 1
    assert m.tokenizer == "test-bpe" and json.dumps(m.to_dict(), ensure_ascii=False)


TRICKY = [
    "\ufeff  first line with BOM\t \r",
    "नमस्कार\u00a0मित्रांनो\u2009आज\u3000 ",       # no-break, thin and ideographic spaces
    "\u2003\u2003", "", "   ", "\x1c\x1dseparators\x1eare\x1fspace",
    "emoji 😀 and “quotes” – dash’s", "tab\tseparated\twords", "\u0085next line\u2028sep\u2029",
    "मराठी भाषा", "trailing spaces   ", "\u1680ogham\u205fmath\u202fnarrow",
]


def test_counts_equal_brute_force_with_odd_whitespace_across_chunks(tmp_path, tokenizer, monkeypatch):
    rng = random.Random(0)
    pool = TRICKY + lines("mr.txt")[:60] + lines("en.txt")[:60]
    # plain-ASCII-whitespace blocks (fast path) and blocks with odd spaces (exact path), CRLF mixed in
    parts = [rng.choice(pool) + rng.choice(["\n", "\r\n", "\n\n"]) for _ in range(3000)]
    (tmp_path / "odd.txt").write_text("".join(parts), encoding="utf-8")
    (tmp_path / "plain.txt").write_text("\n".join(lines("mr.txt")), encoding="utf-8")
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(textscan, "SEGMENT_BYTES", 50_000)       # several ranges per file
    spec = CorpusSpec(str(tmp_path))
    m = measure_corpus(spec, tokenizer)
    truth = brute_force(spec, tokenizer)
    assert (m.documents, m.characters, m.bytes, m.words, m.tokens) == (
        truth["documents"], truth["characters"], truth["bytes"], truth["words"], truth["tokens"])


@pytest.mark.parametrize("final_newline", [True, False])
def test_counts_equal_brute_force_on_clean_lines(tmp_path, tokenizer, monkeypatch, final_newline):
    """Normalised text (no blank lines, no spaces at line ends) takes the shortcut path: same numbers."""
    clean = [" ".join(line.split()) for line in lines("mr.txt") + lines("en.txt")]
    (tmp_path / "clean.txt").write_text("\n".join(clean) + ("\n" if final_newline else ""), "utf-8")
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 3000)
    spec = CorpusSpec(str(tmp_path))
    m = measure_corpus(spec, tokenizer)
    truth = brute_force(spec, tokenizer)
    assert (m.documents, m.characters, m.bytes, m.words, m.tokens) == (
        truth["documents"], truth["characters"], truth["bytes"], truth["words"], truth["tokens"])


def test_structured_formats_measure_like_their_documents(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mr = lines("mr.txt")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in mr[:50]), "utf-8")
    (tmp_path / "b.csv").write_text("text,label\n" + "\n".join(f'"{t}",1' for t in mr[50:100]), "utf-8")
    pq.write_table(pa.table({"text": mr[100:150]}), tmp_path / "c.parquet", row_group_size=10)
    spec = CorpusSpec(str(tmp_path))
    m = measure_corpus(spec, tokenizer)
    truth = brute_force(spec, tokenizer)
    assert m.files == 3 and m.documents == 150
    assert (m.characters, m.bytes, m.words, m.tokens) == (
        truth["characters"], truth["bytes"], truth["words"], truth["tokens"])


def test_parallel_scan_gives_the_same_counts(tmp_path, tokenizer, monkeypatch):
    body = "\n".join(lines("mr.txt") + lines("en.txt")) + "\n"
    for index in range(2):
        (tmp_path / f"part{index}.txt").write_text(body * 20, "utf-8")
    spec = CorpusSpec(str(tmp_path))
    serial = measure_corpus(spec, tokenizer)
    monkeypatch.setattr(textscan, "PARALLEL_MIN_BYTES", 1)      # force the worker processes
    monkeypatch.setattr(textscan, "SEGMENT_BYTES", 200_000)
    parallel = measure_corpus(spec, tokenizer)
    assert (parallel.documents, parallel.characters, parallel.bytes, parallel.words, parallel.tokens) == (
        serial.documents, serial.characters, serial.bytes, serial.words, serial.tokens)
    assert parallel.duplicates == serial.duplicates
    assert serial.duplicates["exact_duplicate_documents"] == serial.documents - len(set(lines("mr.txt") + lines("en.txt")))


# ------------------------------------------------------------------------------------------ sampling


@pytest.fixture(scope="module")
def larger_corpus(tmp_path_factory) -> Path:
    """8k documents of 1-3 real sentences each, Marathi, Hindi and English mixed (varied tokens/char)."""
    rng = random.Random(1)
    sentences = lines("mr.txt") + lines("hi.txt") + lines("en.txt")
    folder = tmp_path_factory.mktemp("larger")
    with open(folder / "corpus.txt", "w", encoding="utf-8") as handle:
        for _ in range(8_000):
            handle.write(" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3))) + "\n")
    return folder


def test_sample_interval_holds_the_exact_value(larger_corpus, tokenizer, monkeypatch):
    spec = CorpusSpec(str(larger_corpus))
    exact = measure_corpus(spec, tokenizer, full=True)
    truth = brute_force(spec, tokenizer)
    assert exact.tokens_exact and exact.tokens == truth["tokens"] and exact.sampled_documents == 8_000
    monkeypatch.setattr(measure, "EXACT_BELOW_CHARS", 100_000)
    covered = 0
    for seed in range(5):
        m = measure_corpus(spec, tokenizer, seed=seed)
        low, high = m.tokens_per_char_ci95
        assert not m.tokens_exact and m.sampled_documents < m.documents
        assert (high - low) / 2 <= 0.0101 * m.tokens_per_char          # ±1% at 95%
        assert m.characters == exact.characters and m.documents == exact.documents   # counts stay exact
        assert abs(m.tokens / exact.tokens - 1) < 0.03
        covered += low <= exact.tokens_per_char <= high
    assert covered >= 4, f"the 95% interval held the exact value for {covered} of 5 seeds"


def test_same_seed_same_sample(larger_corpus, tokenizer, monkeypatch):
    monkeypatch.setattr(measure, "EXACT_BELOW_CHARS", 100_000)
    spec = CorpusSpec(str(larger_corpus))
    first, second = measure_corpus(spec, tokenizer, seed=3), measure_corpus(spec, tokenizer, seed=3)
    assert first.to_dict() == second.to_dict()


# ------------------------------------------------------------------------------------------ scripts, language


def test_script_mix_devanagari_latin_and_japanese():
    assert script_mix(lines("mr.txt")) == {"Devanagari": 1.0}
    assert script_mix(lines("en.txt"))["Latin"] > 0.99
    mixed = script_mix(lines("mr.txt")[:50] + lines("en.txt")[:50])
    assert set(list(mixed)[:2]) == {"Devanagari", "Latin"} and abs(sum(mixed.values()) - 1) < 1e-3
    japanese = script_mix((DATA / "corpus" / "ja.txt").read_text("utf-8").splitlines())
    assert {"Han", "Hiragana", "Katakana"} <= set(japanese) and not mostly_space_delimited(japanese)
    assert mostly_space_delimited(mixed)


def test_no_words_for_a_script_without_spaces(tokenizer):
    m = measure_corpus(CorpusSpec(str(DATA / "corpus" / "ja.txt")), tokenizer)
    assert m.words is None and m.tokens_per_word is None and m.multi_token_word_share is None
    assert m.langid["top"] == "ja"


def test_langid_agrees_for_marathi(tokenizer):
    m = measure_corpus(CorpusSpec(str(TEXT / "mr.txt")), tokenizer, profile("mr"))
    assert m.langid["expected"] == "mr" and m.langid["top"] == "mr"
    assert m.langid["agreement"] > 0.8 and not m.langid["mismatch"]
    assert m.langid["sample"] == m.documents and abs(sum(m.langid["distribution"].values()) - 1) < 0.2


def test_english_corpus_declared_marathi_is_a_mismatch(tokenizer):
    m = measure_corpus(CorpusSpec(str(TEXT / "en.txt")), tokenizer, profile("mr"))
    assert m.langid["top"] == "en" and m.langid["agreement"] < 0.05 and m.langid["mismatch"]
    assert m.script_mix.get("Latin", 0) > 0.99 and m.words is not None


def test_premium_vs_english_on_the_parallel_reference(tokenizer):
    hindi = profiles.get_profile("hi")
    own, english = profiles.reference_lines(hindi), profiles.english_reference_lines()
    if not own:
        pytest.skip("the Hindi profile ships no reference text")
    expected = sum(map(len, tokenizer.encode_batch(own))) / sum(map(len, tokenizer.encode_batch(english)))
    assert reference_premium(tokenizer, hindi) == pytest.approx(expected, abs=1e-4)
    m = measure_corpus(CorpusSpec(str(TEXT / "hi.txt")), tokenizer, hindi)
    assert m.premium_vs_english == pytest.approx(expected, abs=1e-4) and m.premium_reference == hindi.reference
    assert reference_premium(tokenizer, None) is None


# ------------------------------------------------------------------------------------------ bad input


def test_bad_files_are_skipped_with_offsets_and_not_counted(tmp_path, tokenizer):
    good = "\n".join(lines("mr.txt")[:20]) + "\n"
    (tmp_path / "good.txt").write_text(good, "utf-8")
    (tmp_path / "latin1.txt").write_bytes(good.encode("utf-8") + "é".encode("latin-1") + b"\n" + good.encode())
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")
    (tmp_path / "z_binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    m = measure_corpus(CorpusSpec(str(tmp_path)), tokenizer)
    # Only the line holding the bad byte is left out of latin1.txt (issue 17: never a whole file for one
    # byte); the binary file is skipped whole. Neither is counted.
    assert m.files == 2 and m.documents == 60
    skipped = {Path(s.path).name: s for s in m.skipped}
    assert skipped["latin1.txt"].offset == len(good.encode("utf-8")) and "unsupported" in skipped["image.png"].reason
    assert (skipped["latin1.txt"].kind, skipped["latin1.txt"].count, skipped["latin1.txt"].line) == ("records", 1, 21)
    assert skipped["z_binary.txt"].kind == "file" and "binary" in skipped["z_binary.txt"].reason
    with pytest.raises(BabeltuneError, match=r"latin1\.txt: invalid UTF-8 at byte"):
        measure_corpus(CorpusSpec(str(tmp_path), strict=True), tokenizer)


def test_empty_corpus_is_an_error(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n  \n", "utf-8")
    with pytest.raises(BabeltuneError, match="contains no documents"):
        measure_corpus(CorpusSpec(str(tmp_path)), tokenizer)


def test_sample_of_many_files_is_bounded_and_spans_them(tmp_path, monkeypatch):
    sentences = lines("mr.txt")
    for index in range(60):
        (tmp_path / f"{index:02d}.txt").write_text("\n".join(sentences[index % 7::2]), "utf-8")
    (tmp_path / "extra.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in sentences), "utf-8")
    monkeypatch.setattr(textscan, "POOL_DOCS", 300)
    counts, pool, files = measure.count_corpus(CorpusSpec(str(tmp_path)), 0, [])
    assert len(files) == 61 and counts.documents > 60 * 90
    assert len(pool.keys) == 300 and not pool.complete and max(pool.keys) <= pool.threshold
    assert len(set(pool.ordered_documents())) > 150          # drawn across files, not the first ones


@pytest.mark.slow
def test_smollm2_tokens_per_char_on_marathi_matches_the_reference_figure():
    """The corpora README gives 1.159 tokens/char for SmolLM2 on all of UD Marathi; the shipped sample
    (its first 200 sentences) lands close to that."""
    try:
        from babeltune.models.tokenizers import load_tokenizer
        smollm2 = load_tokenizer("smollm2")
    except (ImportError, BabeltuneError) as exc:
        pytest.skip(f"SmolLM2 tokenizer not available: {exc}")
    spec = CorpusSpec(str(TEXT / "mr.txt"))
    m = measure_corpus(spec, smollm2, profile("mr"))
    assert m.tokens == brute_force(spec, smollm2)["tokens"] and m.tokens_exact
    assert 1.13 < m.tokens_per_char < 1.20
    assert m.multi_token_word_share > 0.9 and m.langid["agreement"] > 0.8


def _brute_counts(spec: CorpusSpec) -> tuple[int, int, int, int]:
    docs = list(iter_documents(spec))
    return len(docs), sum(map(len, docs)), sum(len(d.encode("utf-8")) for d in docs), sum(len(d.split()) for d in docs)


def test_scanner_counts_equal_brute_force_on_random_text(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings, strategies as st

    spaces = st.sampled_from([" ", "\t", "\r", "\n", "\n\n", "\x0b", "\x1c", "\xa0", "\u2009", "\u3000", "\u2028", "\x85"])
    pieces = st.one_of(spaces, st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
                       st.sampled_from(lines("mr.txt")[:5] + ["😀", "“x”", "’", "\u200b"]))

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(parts=st.lists(pieces, min_size=1, max_size=60), chunk=st.integers(16, 400))
    def check(parts, chunk):
        folder = tmp_path_factory.mktemp("fuzz")
        (folder / "a.txt").write_text("".join(parts), encoding="utf-8")
        spec = CorpusSpec(str(folder))
        try:
            truth = _brute_counts(spec)
        except BabeltuneError:          # no documents at all: the scanner must say so too
            with pytest.raises(BabeltuneError, match="no documents"):
                measure.count_corpus(spec, 0, [])
            return
        old = corpus_module.CHUNK_BYTES
        corpus_module.CHUNK_BYTES = chunk
        try:
            counts, pool, _ = measure.count_corpus(spec, 0, [])
        finally:
            corpus_module.CHUNK_BYTES = old
        assert (counts.documents, counts.characters, counts.bytes, counts.words) == truth
        assert sorted(pool.ordered_documents()) == sorted(iter_documents(spec))

    check()
