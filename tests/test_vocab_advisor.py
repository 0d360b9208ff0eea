"""advise's vocabulary-extension measurement (babeltune.vocab) and the vocab.extend rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor_fixtures import MARATHI, SMOLLM2, measurements
from babeltune import vocab
from babeltune.advisor.rules import vocabulary
from babeltune.advisor.rules.context import RuleContext

DATA = Path(__file__).parent / "data"
SMOLLM2_DIR = Path("/root/.cache/babeltune/models/smollm2-135m-fp32")


def lines(name: str) -> list[str]:
    return [l for l in (DATA / name).read_text(encoding="utf-8").splitlines() if l.strip()]


@pytest.fixture(scope="module")
def tiny_spec(tiny_model_dir) -> dict:
    return vocab.load_spec(str(tiny_model_dir))


def encode(spec: dict, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(spec))
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def test_extension_cuts_marathi_tokens_and_reports_each_size(tiny_spec):
    docs = lines("text/mr.txt") + lines("ud/mr.txt")
    report = vocab.measure_extension(tiny_spec, docs, tied=False, sizes=(50, 200))
    assert report.family == "byte-level-bpe" and report.joined_scripts == ["Devanagari"]
    assert [s.new_tokens for s in report.sizes] == [50, 200]
    rates = [report.base_tokens_per_char] + [s.tokens_per_char for s in report.sizes]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.92 * rates[0]
    assert all(s.embedding_rows == 2 * s.new_tokens for s in report.sizes)   # untied: input and output rows
    assert report.unique_characters == len(set("".join(docs)))
    assert vocab.measure_extension(tiny_spec, docs, tied=True, sizes=(50,)).sizes[0].embedding_rows == 50


def test_sizes_stop_at_what_the_corpus_supports(tiny_spec):
    report = vocab.measure_extension(tiny_spec, lines("text/mr.txt")[:40], tied=True, sizes=(10, 100_000, 200_000))
    assert len(report.sizes) == 2 and 10 < report.sizes[1].new_tokens < 100_000


def test_extended_tokenizer_keeps_every_id_and_english_and_other_scripts_exactly(tiny_spec):
    train = lines("text/mr.txt")
    extended, added, scripts = vocab.build_extension(tiny_spec, train, 300)
    assert len(added) == 300 and scripts == ["Devanagari"]
    base_vocab = tiny_spec["model"]["vocab"]
    assert all(extended["model"]["vocab"][piece] == i for piece, i in base_vocab.items())
    assert sorted(extended["model"]["vocab"][p] for p in added) == list(range(vocab.next_free_id(tiny_spec),
                                                                              vocab.next_free_id(tiny_spec) + 300))
    assert extended["added_tokens"] == tiny_spec["added_tokens"]      # real merges, not added tokens
    others = lines("text/en.txt") + [l for name in ("ar", "ko", "ja", "ru", "zh") for l in lines(f"ud_sample/{name}.txt")]
    assert encode(extended, others) == encode(tiny_spec, others)
    mr = lines("ud/mr.txt")
    assert sum(map(len, encode(extended, mr))) < 0.92 * sum(map(len, encode(tiny_spec, mr)))


def test_unsupported_family_is_reported_not_guessed():
    spec = {"model": {"type": "WordPiece", "vocab": {"a": 0}}, "pre_tokenizer": None, "normalizer": None}
    report = vocab.measure_extension(spec, ["abc"], tied=True)
    assert report.family is None and "WordPiece" in report.why and not report.sizes


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_DIR.is_dir(), reason="SmolLM2-135M not converted on this machine")
def test_smollm2_on_marathi_halves_tokens_per_char_and_keeps_english():
    spec = vocab.load_spec(str(SMOLLM2_DIR))
    report = vocab.measure_extension(spec, lines("ud/mr.txt") + lines("text/mr.txt"), tied=True, sizes=(1000,))
    assert report.base_tokens_per_char > 1.0 and report.sizes[0].speedup > 1.5
    extended, _, _ = vocab.build_extension(spec, lines("text/mr.txt"), 500)
    english = (Path(__file__).parents[1] / "examples/data/english/eval.txt").read_text(encoding="utf-8").splitlines()
    assert encode(extended, english) == encode(spec, english)


# --- the rule ---------------------------------------------------------------------------------------------


def found(before=1.13, sizes=((1000, 0.53), (4000, 0.46), (16000, 0.41)), heldout=70_000) -> dict:
    return {"family": "byte-level-bpe", "why": "measured", "base_tokens_per_char": before, "heldout_characters": heldout,
            "sizes": [{"new_tokens": n, "tokens_per_char": t, "speedup": before / t, "embedding_rows": n} for n, t in sizes]}


def decide(report: dict, total_tokens: int, goal: str = "cpt"):
    m = measurements(tokens_per_char=1.13, total_tokens=total_tokens)
    m.vocab_extension = report
    return vocabulary.rule_vocab_extend(RuleContext(measurements=m, facts=SMOLLM2, profile=MARATHI, goal=goal))


def test_rule_refuses_a_corpus_below_the_published_threshold_and_cites_the_figures():
    small = decide(found(), total_tokens=750_000)              # ~0.66M characters: MahaSent's size
    assert small.value == 0
    assert "1.130 -> 0.410" in small.reason and "3M" in small.reason and "Yamaguchi" in small.reason


def test_rule_picks_the_largest_size_the_text_supports():
    assert decide(found(), total_tokens=4_000_000).value == 16000          # 3.5M chars >= 16k x 190
    assert decide(found(), total_tokens=3_400_000).value == 4000           # 3.0M chars: 16k rows need 3.04M
    reason = decide(found(), total_tokens=4_000_000).reason
    assert "+16,000 merges" in reason and "2.76x" in reason and "mean of its pieces" in reason


def test_rule_stops_where_a_larger_size_gains_too_little():
    flat = found(sizes=((1000, 0.53), (4000, 0.50), (16000, 0.49)))
    assert decide(flat, total_tokens=10_000_000).value == 1000


def test_rule_says_no_when_the_tokenizer_already_fits_or_nothing_was_measured():
    fits = decide(found(before=0.30, sizes=((1000, 0.28), (4000, 0.26))), total_tokens=10_000_000)
    assert fits.value == 0 and "already fits" in fits.reason and "1.15x" in fits.reason
    assert decide({}, total_tokens=10_000_000).value == 0
    assert decide({"family": None, "why": "a Unigram tokenizer", "sizes": []}, 10_000_000).reason.endswith("Unigram tokenizer")
    assert decide(found(), total_tokens=10_000_000, goal="sft").value == 0


def test_config_takes_vocab_extend_and_refuses_negative(tmp_path):
    from babeltune.config import validate_config
    from babeltune.errors import BabeltuneError

    base = {"language": "mr", "model": {"name": "x", "max_seq_length": 64}, "data": {"train": "t.txt"},
            "training": {"per_device_train_batch_size": 1, "learning_rate": 1e-4, "max_steps": 1},
            "eval": {"evaluation_strategy": "no"}}
    assert validate_config(base).vocab.extend == 0
    assert validate_config({**base, "vocab": {"extend": 4000}}).vocab.extend == 4000
    with pytest.raises(BabeltuneError, match="vocab.extend"):
        validate_config({**base, "vocab": {"extend": -1}})
