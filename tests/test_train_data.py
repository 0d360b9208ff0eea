"""Training data: packing modes, SFT loss masks, the deterministic held-out split, collators."""

from __future__ import annotations

import json
import random

import pytest

from babeltune.errors import BabeltuneError
from babeltune.trainer import data as D

from conftest import DATA, TEXT, config_maker

make_config = config_maker(model={"max_seq_length": 32})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_blocks_are_full_length_and_keep_every_document_in_order(tokenizer, marathi_lines):
    prepared = D.prepare_data(make_config(data={"packing": "blocks"}), tokenizer)
    rows = prepared.train.rows
    assert rows and all(len(r["input_ids"]) == 32 and r["labels"] == r["input_ids"] for r in rows)
    stream = [t for r in rows for t in r["input_ids"]]
    train_docs = D.tokenize_documents(tokenizer, [l for l in marathi_lines if l not in prepared.eval_texts])
    expected = [t for doc in train_docs for t in doc]
    assert stream == expected[:len(stream)] and len(expected) - len(stream) < 32   # only the remainder dropped
    assert stream.count(tokenizer.eos_token_id) >= len(stream) // max(len(d) for d in train_docs)


def test_padding_free_varlen_flattens_the_batch_and_restarts_positions_per_document(tokenizer):
    prepared = D.prepare_data(make_config(data={"packing": "padding_free"}), tokenizer, padding_free=True)
    assert isinstance(prepared.collator, D.FlattenCollator)
    rows = prepared.train.rows[:3]
    assert all(len(r["input_ids"]) <= 32 and sum(r["doc_lengths"]) == len(r["input_ids"]) for r in rows)
    batch = prepared.collator(rows)
    positions, labels = batch["position_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) == sum(len(r["doc_lengths"]) for r in rows) > len(rows)   # several documents per row
    assert all(labels[i] == D.IGNORE_INDEX for i in starts)
    assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    assert "attention_mask" not in batch


def test_padding_free_rows_keep_documents_apart_under_sdpa(tokenizer, tiny_model_dir):
    """The sdpa path: each packed document must get exactly the logits it gets alone (no cross-document
    attention), and the padding tail must carry no loss."""
    import torch
    from transformers import AutoModelForCausalLM

    prepared = D.prepare_data(make_config(data={"packing": "padding_free"}), tokenizer, packed_rows=True)
    assert isinstance(prepared.collator, D.PackedRowCollator) and prepared.stats["packing"] == "padding_free"
    rows = [r for r in prepared.train.rows if len(r["doc_lengths"]) >= 2][:2] + [prepared.train.rows[-1]]
    batch = prepared.collator(rows)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        start = 0
        for length in rows[0]["doc_lengths"]:
            alone = model(input_ids=batch["input_ids"][:1, start:start + length], use_cache=False).logits
            assert torch.allclose(packed[0, start:start + length], alone[0], atol=1e-4)
            start += length
    for i, row in enumerate(rows):
        assert (batch["labels"][i, len(row["input_ids"]):] == D.IGNORE_INDEX).all()
        starts = [k for k, p in enumerate(batch["position_ids"][i, :len(row["input_ids"])].tolist()) if p == 0]
        assert len(starts) == len(row["doc_lengths"]) and all(batch["labels"][i, k] == D.IGNORE_INDEX for k in starts)


def test_blocks_batches_carry_no_all_ones_attention_mask(tokenizer):
    prepared = D.prepare_data(make_config(data={"packing": "blocks"}), tokenizer)
    batch = prepared.collator(prepared.train.rows[:2])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (2, 32)


def test_padding_free_without_support_falls_back_to_blocks_and_says_so(tokenizer):
    prepared = D.prepare_data(make_config(data={"packing": "padding_free"}), tokenizer, padding_free=False)
    assert prepared.stats["packing"] == "blocks" and any("padding_free" in n for n in prepared.notes)


def test_off_pads_per_batch_with_ignored_labels(tokenizer):
    prepared = D.prepare_data(make_config(data={"packing": "off"}), tokenizer)
    rows = prepared.train.rows[:4]
    batch = prepared.collator(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (4, width)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == D.IGNORE_INDEX).all()
        assert batch["input_ids"][i, n:].eq(tokenizer.pad_token_id).all()


def test_heldout_split_is_deterministic_disjoint_and_order_independent(marathi_lines):
    train, held = D.split_heldout(marathi_lines, lambda t: t, 0.1)
    shuffled = list(marathi_lines)
    random.Random(0).shuffle(shuffled)
    train2, held2 = D.split_heldout(shuffled, lambda t: t, 0.1)
    assert set(held) == set(held2) and set(train) == set(train2)
    assert not set(train) & set(held) and len(train) + len(held) == len(marathi_lines)
    assert 0.03 < len(held) / len(marathi_lines) < 0.2


def test_heldout_split_of_tiny_corpus_keeps_one_each_side():
    train, held = D.split_heldout(["alpha", "beta"], lambda t: t, 0.01)
    assert len(train) == 1 and len(held) == 1
    with pytest.raises(BabeltuneError, match="cannot be split"):
        D.split_heldout(["only one"], lambda t: t, 0.1)


def test_eval_file_is_used_instead_of_a_split(tokenizer):
    prepared = D.prepare_data(make_config(data={"eval": str(TEXT / "hi.txt")}), tokenizer)
    assert prepared.heldout_source.startswith("data.eval") and prepared.stats["train_documents"] == 200
    assert len(prepared.eval_texts) == 100


def test_sft_loss_only_on_the_response(tokenizer):
    config = make_config(model={"max_seq_length": 96}, data={"train": str(DATA / "sft" / "mr_pairs.jsonl"), "mode": "sft",
                                                            "eval_fraction": 0.1})
    prepared = D.prepare_data(config, tokenizer)
    records = [json.loads(l) for l in (DATA / "sft" / "mr_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    by_response = {r["response"]: r for r in records}
    for row in prepared.train.rows[:5]:
        learned = [t for t, label in zip(row["input_ids"], row["labels"]) if label != D.IGNORE_INDEX]
        text = tokenizer.decode(learned)
        assert text.endswith(tokenizer.eos_token)
        response = text[: -len(tokenizer.eos_token)]
        assert response in by_response                     # exactly the response, nothing of the prompt
        assert row["labels"][0] == D.IGNORE_INDEX


def test_sft_padding_free_packs_whole_examples_with_their_response_masks(tokenizer):
    """sft + padding_free: several whole examples per row (never split, no padding inside a row), each keeping
    its prompt mask; the collator restarts positions at each example and masks its first label."""
    base = {"max_seq_length": 256}
    data = {"train": str(DATA / "sft" / "mr_pairs.jsonl"), "mode": "sft", "eval_fraction": 0.1}
    one_each = D.prepare_data(make_config(model=base, data={**data, "packing": "off"}), tokenizer)
    packed = D.prepare_data(make_config(model=base, data={**data, "packing": "padding_free"}), tokenizer,
                            packed_rows=True)
    assert packed.stats["packing"] == "padding_free"
    assert packed.stats["train_rows"] < one_each.stats["train_rows"] / 2       # several examples per row
    examples = [(r["input_ids"], r["labels"]) for r in one_each.train.rows]
    unpacked = []
    for row in packed.train.rows:
        assert len(row["input_ids"]) <= 256 and sum(row["doc_lengths"]) == len(row["input_ids"])
        start = 0
        for length in row["doc_lengths"]:
            unpacked.append((row["input_ids"][start:start + length], row["labels"][start:start + length]))
            start += length
    assert unpacked == examples                                                # whole examples, in order, labels kept
    batch = packed.collator(packed.train.rows[:2])
    starts = [k for k, p in enumerate(batch["position_ids"][0].tolist()) if p == 0]
    assert len(starts) >= len(packed.train.rows[0]["doc_lengths"]) and all(batch["labels"][0, k] == D.IGNORE_INDEX
                                                                          for k in starts)


def test_sft_padding_free_without_support_is_one_example_per_row(tokenizer):
    data = {"train": str(DATA / "sft" / "mr_pairs.jsonl"), "mode": "sft", "packing": "padding_free"}
    prepared = D.prepare_data(make_config(model={"max_seq_length": 256}, data=data), tokenizer)
    assert prepared.stats["packing"] == "off" and isinstance(prepared.collator, D.PadCollator)
    assert any("one example per row" in n for n in prepared.notes)


def test_sft_chat_messages_use_the_template_and_mask_user_turns(tokenizer, tmp_path):
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    config = make_config(model={"max_seq_length": 128}, data={"train": str(DATA / "sft" / "mr_chat.jsonl"), "mode": "sft"})
    prepared = D.prepare_data(config, tokenizer)
    chats = [json.loads(l)["messages"] for l in (DATA / "sft" / "mr_chat.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = {c[1]["content"] for c in chats}
    for row in prepared.train.rows:
        learned = tokenizer.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != D.IGNORE_INDEX])
        assert learned.removesuffix("<|endoftext|>") in answers
        assert "user" in tokenizer.decode(row["input_ids"])


def test_sft_without_the_fields_names_them(tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n', encoding="utf-8")
    with pytest.raises(BabeltuneError, match="instruction, response missing.*question, answer"):
        D.prepare_data(make_config(data={"train": str(bad), "mode": "sft"}), tokenizer)


def test_sft_drops_examples_whose_prompt_fills_the_window(tokenizer, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"instruction": "शब्द " * 200, "response": "हो"}] + [{"instruction": f"प्रश्न {i}", "response": "उत्तर"} for i in range(5)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    prepared = D.prepare_data(make_config(data={"train": str(path), "mode": "sft", "eval": str(path)}), tokenizer)
    assert prepared.stats["train_rows"] == 5 and any("dropped" in n for n in prepared.notes)


def test_empty_corpus_is_a_clear_error(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(BabeltuneError) as info:
        D.prepare_data(make_config(data={"train": str(empty)}), tokenizer)
    assert str(empty) in str(info.value)
