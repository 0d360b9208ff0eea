"""Duplicate documents on real text (MahaSent tweets with their real repeats): counts equal brute force,
memory stays bounded (and the result says when it sampled), every path of the scanner counts the same,
and `train` removes them with data.dedup."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from babeltune.advisor import textscan
from babeltune.corpus import duplicates
from babeltune.corpus.reader import CorpusSpec, iter_documents
from babeltune.advisor.measure import measure_corpus

from conftest import make_config

DATA = Path(__file__).parent / "data"
TWEETS = DATA / "dedup" / "mahasent_tweets.txt"
MARATHI_TEXT = DATA / "text" / "mr.txt"


class ByteTokenizer:
    """One token per UTF-8 byte: duplicates do not depend on the tokenizer."""

    name = "bytes"
    vocab_size = 256

    def encode_batch(self, texts):
        return [list(t.encode("utf-8")) for t in texts]


def reference_near(text: str) -> bytes:
    """The near key spelled out per character (the module does it per chunk)."""
    text = re.sub(r"(?:https?://|www\.)\S+|@\w+", "", text)
    return bytes(b for b in text.encode("utf-8").lower() if b >= 0x80 or chr(b).isalnum())


def brute(docs: list[str]) -> dict:
    exact, near = Counter(docs), Counter(map(reference_near, docs))
    first = {}
    for doc in docs:
        first.setdefault(doc, len(doc))
    return {"exact": len(docs) - len(exact), "near": len(docs) - len(near), "unique_chars": sum(first.values()),
            "most": max(exact.values())}


def test_real_tweets_counts_equal_brute_force():
    docs = list(iter_documents(CorpusSpec(str(TWEETS))))
    expected = brute(docs)
    assert (expected["exact"], expected["near"]) == (27, 38)     # the sample's real repeats (ATTRIBUTION.md)
    found = measure_corpus(CorpusSpec(str(TWEETS)), ByteTokenizer()).duplicates
    assert found["exact_duplicate_documents"] == expected["exact"]
    assert found["near_duplicate_documents"] == expected["near"]
    assert found["unique_characters"] == expected["unique_chars"]
    assert found["most_repeated"] == expected["most"] == 6
    assert found["example"]["occurrences"] == 6 and Counter(docs)[found["example"]["text"]] == 6
    assert found["sampled"] is False


def test_near_key_per_document_equals_the_chunk_key():
    docs = list(iter_documents(CorpusSpec(str(TWEETS))))[:400] + ["Ok, THANKS!! https://t.co/x1 @someone", "ok thanks"]
    assert [duplicates.near_key(d) for d in docs] == [reference_near(d) for d in docs]
    assert duplicates.near_key(docs[-2]) == duplicates.near_key(docs[-1])
    joined = duplicates.normalise("\n".join(docs), b"\n").split(b"\n")
    assert joined == [duplicates.near_key(d) for d in docs]


def test_memory_stays_bounded_and_says_it_sampled(tmp_path, monkeypatch):
    # Four copies of every tweet: 7,312 documents, ~1,800 distinct texts, held in at most 256 hashes.
    body = TWEETS.read_text("utf-8")
    corpus = tmp_path / "four.txt"
    corpus.write_text(body * 4, "utf-8")
    docs = list(iter_documents(CorpusSpec(str(corpus))))
    expected = brute(docs)
    monkeypatch.setattr(duplicates, "CAPACITY", 256)
    counter = duplicates.DuplicateCounter()
    for start in range(0, len(docs), 500):
        counter.add_documents(docs[start:start + 500])
        counter.exact.compact()
        assert len(counter.exact.hashes) <= 256 and len(counter.near.hashes) <= 256
    found = duplicates.summarise(counter, len(docs), sum(map(len, docs)))
    assert found["sampled"] is True and found["sampling_rate"] < 1
    assert found["exact_duplicate_documents"] == pytest.approx(expected["exact"], rel=0.02)
    assert found["unique_characters"] == pytest.approx(expected["unique_chars"], rel=0.1)
    m = measure_corpus(CorpusSpec(str(corpus)), ByteTokenizer())
    assert m.duplicates["sampled"] is True
    assert m.duplicates["exact_duplicate_documents"] == pytest.approx(expected["exact"], rel=0.02)


def test_parallel_paragraph_and_jsonl_scans_count_the_same(tmp_path, monkeypatch):
    docs = list(iter_documents(CorpusSpec(str(TWEETS))))
    expected = brute(docs)
    jsonl = tmp_path / "t.jsonl"
    import json
    jsonl.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), "utf-8")
    spaced = tmp_path / "spaced.txt"     # non-ASCII spaces take the scanner's exact per-line path
    spaced.write_text("\n".join(f"\u00a0{d}\u3000" for d in docs) + "\n", "utf-8")
    paragraphs = tmp_path / "p.txt"
    paragraphs.write_text("\n\n".join(docs) + "\n", "utf-8")
    results = [measure_corpus(CorpusSpec(str(jsonl)), ByteTokenizer()).duplicates,
               measure_corpus(CorpusSpec(str(spaced)), ByteTokenizer()).duplicates,
               measure_corpus(CorpusSpec(str(paragraphs), doc_split="paragraph"), ByteTokenizer()).duplicates]
    monkeypatch.setattr(textscan, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(textscan, "SEGMENT_BYTES", 40_000)
    results.append(measure_corpus(CorpusSpec(str(TWEETS)), ByteTokenizer()).duplicates)
    for found in results:
        assert (found["exact_duplicate_documents"], found["near_duplicate_documents"]) == (expected["exact"], expected["near"])
        assert found["unique_characters"] == expected["unique_chars"]


def test_hash_counts_merge_keeps_the_lower_rate():
    rng = np.random.default_rng(0)
    a, b = duplicates.HashCounts(capacity=100), duplicates.HashCounts(capacity=1000)
    a.add(rng.integers(0, 2**63, 500, dtype=np.uint64), np.ones(500, dtype=np.int64))
    b.add(rng.integers(0, 2**63, 300, dtype=np.uint64), np.ones(300, dtype=np.int64))
    a.compact()
    b.compact()
    assert a.shift > 0 and b.shift == 0
    b.merge(a)
    assert b.shift == a.shift and np.all(b.hashes < np.uint64(1 << (64 - b.shift)))


# --------------------------------------------------------------------------- train: data.dedup


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def train_config(**data):
    return make_config(data={"train": str(TWEETS), **data})


@pytest.mark.parametrize("mode, removed", [("off", 0), ("exact", 27), ("near", 38)])
def test_train_removes_what_advise_counted(hf_tokenizer, mode, removed):
    from babeltune.trainer.data import prepare_data

    prepared = prepare_data(train_config(dedup=mode), hf_tokenizer)
    docs = list(iter_documents(CorpusSpec(str(TWEETS))))
    assert prepared.stats["dedup_removed"] == removed
    assert prepared.stats["train_documents"] + prepared.stats["eval_documents"] == len(docs) - removed
    if mode != "off":
        assert f"removed {removed:,} of {len(docs):,} training documents" in " ".join(prepared.notes)
    if mode == "near":       # what is left holds each near key once, so none is on both sides of the split
        held_out = {duplicates.near_key(d) for d in prepared.eval_texts}
        assert len(held_out) == len(prepared.eval_texts)
        left = len({duplicates.near_key(d) for d in docs})
        assert prepared.stats["train_documents"] + prepared.stats["eval_documents"] == left


def test_train_dedups_sft_records(hf_tokenizer, tmp_path):
    from babeltune.trainer.data import prepare_data

    records = (DATA / "sft" / "mr_pairs.jsonl").read_text("utf-8").splitlines()
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text("\n".join(records + records[:5]) + "\n", "utf-8")
    prepared = prepare_data(train_config(train=str(corpus), mode="sft", dedup="exact"), hf_tokenizer)
    assert prepared.stats["dedup_removed"] == 5
    assert prepared.stats["train_documents"] + prepared.stats["eval_documents"] == len(records)


def test_dedup_key_in_yaml_accepts_false_as_off():
    assert train_config(dedup=False).data.dedup == "off"
