"""Training data: corpus -> token rows -> batches.

cpt (continued pretraining): documents are tokenised with an EOS after each one, then
  - blocks:       concatenated and cut into max_seq_length blocks (labels = input ids);
  - padding_free: greedily packed into rows of at most max_seq_length tokens whose position ids restart at
                  every document, so no token attends across documents. With flash-attention varlen
                  (``LoadedModel.padding_free``) a batch is flattened into one row (no padding at all); with
                  sdpa/eager (``LoadedModel.packed_rows``: transformers builds a block-diagonal causal mask from
                  the position ids) the rows stay rows and only each row's short tail is padding;
  - off:          one document per row, padded per batch.
sft: instruction/response records or chat ``messages`` (the tokenizer's chat template); loss only on the
  response tokens (labels -100 on the prompt). With padding_free, whole examples are packed into rows as above
  (positions restart at each example, no attention across examples); otherwise one example per row.

When no eval corpus is given, a deterministic held-out split picks documents by a hash of their text, so
the same document is held out in every run, whatever the seed or the file order.
Plain torch Datasets: the GPU machine has no `datasets` package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from babeltune.errors import BabeltuneError

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

IGNORE_INDEX = -100
TOKENIZE_BATCH = 512
MANIFEST_SKIPS = 1000     # skipped/cut entries listed in the manifest (all are counted)


class TokenRows:
    """A list of token rows as a map-style torch Dataset (``__len__`` + ``__getitem__``)."""

    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]

    def token_count(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)


@dataclass
class PreparedData:
    train: TokenRows
    eval: Optional[TokenRows]
    collator: Callable[[list[dict]], dict]
    eval_texts: list[str]                  # held-out documents as text (scored in bits per character at the end)
    heldout_source: str                    # where the held-out split came from, for the log and manifest
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading (the advisor's corpus reader: same formats, same errors)


def corpus_spec(config: "TrainConfig", path: str):
    from babeltune.corpus.reader import CorpusSpec

    data = config.data
    return CorpusSpec(path=path, doc_split=data.doc_split, text_field=data.text_field, text_column=data.text_column,
                      strict=data.strict)


def read_documents(config: "TrainConfig", path: str, skipped: Optional[list] = None) -> list[str]:
    """The documents of ``path``; files/lines/rows skipped and documents cut are appended to ``skipped``."""
    from babeltune.corpus.reader import iter_documents

    documents = list(iter_documents(corpus_spec(config, path), skipped))
    if not documents:
        raise BabeltuneError(f"{path}: no text documents found; point data.train/data.eval at a non-empty corpus")
    return documents


def read_records(config: "TrainConfig", path: str, skipped: Optional[list] = None) -> list[dict]:
    from babeltune.corpus.reader import iter_records

    records = list(iter_records(corpus_spec(config, path), skipped))
    if not records:
        raise BabeltuneError(f"{path}: no records found; SFT needs a JSONL/CSV/parquet file with one example per row")
    return records


def reading_report(skipped: list, notes: list[str], stats: dict[str, Any]) -> None:
    """What the corpus reader skipped or cut: counted in ``stats`` (the manifest's data section, with
    every entry), one line per file and reason in ``notes`` (printed, and kept in the manifest)."""
    from babeltune.corpus.readlog import report_lines, summary

    stats.update(summary(skipped))
    stats["skipped"] = [{"path": s.path, "kind": s.kind, "reason": s.reason, "count": s.count, "line": s.line,
                         "offset": s.offset, "bytes": s.bytes} for s in skipped[:MANIFEST_SKIPS]]
    if len(skipped) > MANIFEST_SKIPS:        # e.g. a folder of thousands of files with another extension
        stats["skipped_entries_not_listed"] = len(skipped) - MANIFEST_SKIPS
    notes.extend(report_lines(skipped))


# ---------------------------------------------------------------------------------------------
# Duplicates (data.dedup)


def dedup_key(config: "TrainConfig") -> Optional[Callable[[Any], bytes]]:
    """The identity of a document (cpt) or record (sft) under data.dedup; None when off. The near key is the
    advisor's (babeltune.corpus.duplicates), so `train` removes what `advise` counted."""
    mode = config.data.dedup
    if mode == "off":
        return None
    from babeltune.corpus.duplicates import exact_key, near_key

    if config.data.mode == "sft":
        if mode == "exact":
            return lambda record: exact_key(record_text(record))
        return lambda record: near_key(record_plain_text(record, config))
    return exact_key if mode == "exact" else near_key


def remove_duplicates(items: list, key: Optional[Callable[[Any], bytes]]) -> tuple[list, int]:
    """(first copy of every item, number of later copies removed), order kept."""
    if key is None:
        return items, 0
    seen: set[bytes] = set()
    kept = []
    for item in items:
        identity = key(item)
        if identity not in seen:
            seen.add(identity)
            kept.append(item)
    return kept, len(items) - len(kept)


# ---------------------------------------------------------------------------------------------
# Held-out split


def heldout_score(text: str) -> float:
    """A stable number in [0, 1) derived from the text alone."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_heldout(items: list, key: Callable[[Any], str], fraction: float) -> tuple[list, list]:
    """(train, held out): items whose text hash falls below ``fraction``; at least one of each side."""
    if len(items) < 2:
        raise BabeltuneError(f"data.train: {len(items)} document(s) cannot be split into train and held-out parts; "
                             "add documents or set data.eval to a separate corpus")
    scores = [heldout_score(key(item)) for item in items]
    held = [i for i, s in enumerate(scores) if s < fraction]
    if not held:  # tiny corpora: hold out the single lowest-scoring document
        held = [min(range(len(items)), key=scores.__getitem__)]
    if len(held) == len(items):
        held = held[:-1]
    held_set = set(held)
    return [x for i, x in enumerate(items) if i not in held_set], [items[i] for i in held]


# ---------------------------------------------------------------------------------------------
# Tokenisation


def require_eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise BabeltuneError("model.tokenizer: the tokenizer has no EOS token, which separates documents; "
                             "use a tokenizer with an eos_token")
    return tokenizer.eos_token_id


def tokenize_documents(tokenizer, documents: list[str]) -> list[list[int]]:
    """Token ids per document as the model normally sees them (BOS if the tokenizer adds one), + EOS."""
    from babeltune.corpus.readlog import batches

    eos = require_eos(tokenizer)
    out: list[list[int]] = []
    for batch in batches(documents, TOKENIZE_BATCH):       # bounded by characters too: long documents
        encoded = tokenizer(batch, add_special_tokens=True)["input_ids"]
        for ids in encoded:
            ids = list(ids)
            if not ids or ids[-1] != eos:
                ids.append(eos)
            out.append(ids)
    return out


def chunks(ids: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def pack_blocks(docs: list[list[int]], block: int) -> list[dict]:
    """Concatenate and cut into ``block``-token rows. The remainder is dropped unless it is the only row."""
    stream = [token for doc in docs for token in doc]
    full = len(stream) // block
    rows = [stream[i * block:(i + 1) * block] for i in range(full)]
    if not rows and stream:
        rows = [stream]
    return [{"input_ids": row, "labels": list(row)} for row in rows]


def pack_padding_free(docs: list[list[int]], block: int) -> list[dict]:
    """Greedy in-order packing of whole documents into rows of <= ``block`` tokens, remembering where each
    document starts so the collator can restart position ids there."""
    rows, current, lengths = [], [], []
    for doc in docs:
        for piece in chunks(doc, block):
            if current and len(current) + len(piece) > block:
                rows.append({"input_ids": current, "labels": list(current), "doc_lengths": lengths})
                current, lengths = [], []
            current = current + piece
            lengths.append(len(piece))
    if current:
        rows.append({"input_ids": current, "labels": list(current), "doc_lengths": lengths})
    return rows


def pack_examples(rows: list[dict], block: int) -> list[dict]:
    """sft: whole examples (already truncated to ``block``) packed greedily in order into rows of <= ``block``
    tokens with their labels (-100 on prompts), remembering where each example starts (padding_free)."""
    packed, ids, labels, lengths = [], [], [], []
    for row in rows:
        if ids and len(ids) + len(row["input_ids"]) > block:
            packed.append({"input_ids": ids, "labels": labels, "doc_lengths": lengths})
            ids, labels, lengths = [], [], []
        ids, labels = ids + list(row["input_ids"]), labels + list(row["labels"])
        lengths.append(len(row["input_ids"]))
    if ids:
        packed.append({"input_ids": ids, "labels": labels, "doc_lengths": lengths})
    return packed


def one_per_row(docs: list[list[int]], block: int) -> list[dict]:
    """One document per row (long documents split into block-sized pieces); padded later per batch."""
    return [{"input_ids": piece, "labels": list(piece)} for doc in docs for piece in chunks(doc, block) if len(piece) > 1]


# ---------------------------------------------------------------------------------------------
# SFT


def chat_segments(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """Render ``messages`` with the chat template turn by turn: (text, carries_loss) segments.
    Each prefix rendering must extend the previous one, so the response tokens are exactly located."""
    segments, previous = [], ""
    for k in range(1, len(messages) + 1):
        next_is_assistant = k < len(messages) and messages[k].get("role") == "assistant"
        text = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=next_is_assistant)
        if not text.startswith(previous):
            raise BabeltuneError(f"{where}: the tokenizer's chat template renders turns inconsistently; "
                                 "use prompt/response fields instead of messages")
        segments.append((text[len(previous):], messages[k - 1].get("role") == "assistant"))
        previous = text
    return segments


def record_segments(tokenizer, record: dict, config: "TrainConfig", where: str) -> list[tuple[str, bool]]:
    data = config.data
    if data.messages_field in record:
        messages = record[data.messages_field]
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
            raise BabeltuneError(f"{where}: {data.messages_field} must be a list of {{role, content}} objects")
        if not getattr(tokenizer, "chat_template", None):
            raise BabeltuneError(f"{where}: chat messages need a tokenizer with a chat template; "
                                 f"use {data.prompt_field}/{data.response_field} fields for this model")
        return chat_segments(tokenizer, messages, where)
    missing = [name for name in (data.prompt_field, data.response_field) if not isinstance(record.get(name), str)]
    if missing:
        raise BabeltuneError(f"{where}: text field(s) {', '.join(missing)} missing (keys: {', '.join(map(str, record)) or 'none'}); "
                             "set data.prompt_field / data.response_field or data.messages_field")
    prompt, response = record[data.prompt_field], record[data.response_field]
    if getattr(tokenizer, "chat_template", None):
        return chat_segments(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], where)
    return [(prompt.rstrip() + "\n", False), (response, True)]


def encode_sft(tokenizer, segments: list[tuple[str, bool]], block: int) -> Optional[dict]:
    """Token ids with labels only on response segments; None when truncation leaves no response token."""
    eos = require_eos(tokenizer)
    ids, labels = [], []
    for index, (text, trains) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=(index == 0))["input_ids"]
        ids += piece
        labels += piece if trains else [IGNORE_INDEX] * len(piece)
    if labels and labels[-1] != IGNORE_INDEX and ids[-1] != eos:
        ids.append(eos)
        labels.append(eos)
    ids, labels = ids[:block], labels[:block]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def sft_rows(tokenizer, records: list[dict], config: "TrainConfig", source: str) -> tuple[list[dict], int]:
    rows, dropped = [], 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BabeltuneError(f"{source}: record {index + 1} is not an object")
        row = encode_sft(tokenizer, record_segments(tokenizer, record, config, f"{source}: record {index + 1}"),
                         config.model.max_seq_length)
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    return rows, dropped


def record_text(record: dict) -> str:
    """A record's identity for the held-out hash."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)


def record_plain_text(record: dict, config: "TrainConfig") -> str:
    """A record as readable text (prompt and response, or the chat turns), scored in bits per character."""
    data = config.data
    messages = record.get(data.messages_field)
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return "\n".join(str(record.get(k, "")) for k in (data.prompt_field, data.response_field)).strip()


# ---------------------------------------------------------------------------------------------
# Collators


class PadCollator:
    """Right-pad a batch: pad id in input_ids, -100 in labels, 0 in attention_mask. A batch without padding
    (packed blocks) gets no attention_mask: an all-ones mask sends attention down a slower masked path (and
    transformers/Unsloth check it with a GPU sync), while no mask means plain causal attention."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if all(len(f["input_ids"]) == width for f in features):
            return self.full_rows(features)
        ids, labels, mask = [], [], []
        for f in features:
            gap = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * gap)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * gap)
            mask.append([1] * len(f["input_ids"]) + [0] * gap)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    @staticmethod
    def full_rows(features: list[dict]) -> dict:
        """No padding (packed blocks): no mask, and labels copied from the ids when they are the ids (CPT), which
        halves the list-to-tensor work the GPU may wait for between steps."""
        import torch

        import numpy as np

        ids = torch.from_numpy(np.array([f["input_ids"] for f in features], dtype=np.int64))  # 7x faster than torch.tensor
        same = all(f["labels"] is f["input_ids"] or f["labels"] == f["input_ids"] for f in features)
        labels = ids.clone() if same else torch.from_numpy(np.array([f["labels"] for f in features], dtype=np.int64))
        return {"input_ids": ids, "labels": labels}


def document_positions(feature: dict) -> tuple[list[int], list[int]]:
    """Position ids restarting at each document of a packed row, and its labels with the first label of each
    document set to -100 (it would be predicted across a document boundary)."""
    lengths = feature.get("doc_lengths") or [len(feature["input_ids"])]
    positions, labels, start = [], [], 0
    for length in lengths:
        positions += list(range(length))
        labels += [IGNORE_INDEX] + list(feature["labels"][start + 1:start + length])
        start += length
    return positions, labels


class PackedRowCollator:
    """Padding-free rows for sdpa/eager: each row keeps its documents with restarting position ids and no
    attention_mask, so transformers masks attention block-diagonally per document. Rows shorter than the
    widest are topped up with one padding "document" (its own positions, labels -100) that nothing attends to."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, positions = [], [], []
        for f in features:
            row_positions, row_labels = document_positions(f)
            gap = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * gap)
            labels.append(row_labels + [IGNORE_INDEX] * gap)
            positions.append(row_positions + list(range(gap)))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


class FlattenCollator:
    """Padding-free batches for flash-attention varlen: every row of the batch is concatenated into one row;
    position ids restart at each document and the first label of each document is -100."""

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, labels, positions = [], [], []
        for f in features:
            row_positions, row_labels = document_positions(f)
            ids += list(f["input_ids"])
            labels += row_labels
            positions += row_positions
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([positions])}


# ---------------------------------------------------------------------------------------------
# Entry point


def cpt_rows(tokenizer, documents: list[str], packing: str, block: int) -> list[dict]:
    docs = tokenize_documents(tokenizer, documents)
    if packing == "padding_free":
        return pack_padding_free(docs, block)
    if packing == "blocks":
        return pack_blocks(docs, block)
    return one_per_row(docs, block)


def effective_packing(config: "TrainConfig", padding_free_supported: bool, notes: list[str]) -> str:
    packing = config.data.packing
    if packing == "padding_free" and not padding_free_supported:
        instead = "one example per row (padded per batch)" if config.data.mode != "cpt" else "blocks"
        notes.append("data.packing padding_free needs flash-attention varlen or transformers' packed-sequence masks "
                     f"(sdpa/eager), which this backend's model load does not support; using {instead} instead")
        return "off" if config.data.mode != "cpt" else "blocks"
    if config.data.mode != "cpt" and packing == "blocks":
        notes.append(f"{config.data.mode}: one example per row (padded per batch); blocks packing applies to cpt only")
        return "off"
    return packing


def prepare_data(config: "TrainConfig", tokenizer, *, padding_free: bool = False, packed_rows: bool = False) -> PreparedData:
    """Read, split and tokenise the corpora of ``config`` for the HF Trainer. ``padding_free``: the model runs
    flash-attention varlen (batches flattened to one row); ``packed_rows``: it masks packed rows per document."""
    notes: list[str] = []
    packing = effective_packing(config, padding_free or packed_rows, notes)
    block = config.model.max_seq_length
    if config.data.mode == "classify":
        from babeltune.trainer.classify import prepare_classify

        train_rows, eval_rows, eval_texts, source, stats = prepare_classify(config, tokenizer, packing, notes)
        return _prepared(config, train_rows, eval_rows, eval_texts, source, stats, notes, packing, padding_free, tokenizer)
    sft = config.data.mode == "sft"
    read = read_records if sft else read_documents
    key = record_text if sft else (lambda text: text)
    skipped: list = []
    train_items = read(config, config.data.train, skipped)
    read_count = len(train_items)
    train_items, removed = remove_duplicates(train_items, dedup_key(config))
    if config.data.dedup != "off":
        notes.append(f"data.dedup {config.data.dedup}: removed {removed:,} of {read_count:,} training "
                     f"{'records' if sft else 'documents'} ({removed / read_count:.1%}) as repeats of an earlier one")
    if config.data.eval:
        eval_items, source = read(config, config.data.eval, skipped), f"data.eval ({config.data.eval})"
    else:
        train_items, eval_items = split_heldout(train_items, key, config.data.eval_fraction)
        source = f"hash split of data.train (eval_fraction {config.data.eval_fraction})"
    eval_items = eval_items[:config.eval.max_eval_documents]
    stats = {"train_documents": len(train_items), "eval_documents": len(eval_items), "packing": packing,
             "dedup": config.data.dedup, "dedup_removed": removed}
    reading_report(skipped, notes, stats)
    if sft:
        train_rows, dropped = sft_rows(tokenizer, train_items, config, config.data.train)
        if packing == "padding_free":
            train_rows = pack_examples(train_rows, block)
        eval_rows, _ = sft_rows(tokenizer, eval_items, config, config.data.eval or config.data.train)
        eval_texts = [record_plain_text(record, config) for record in eval_items]
        if dropped:
            notes.append(f"sft: {dropped} example(s) dropped: the prompt fills all {block} tokens, leaving no response to learn")
    else:
        train_rows = cpt_rows(tokenizer, train_items, packing, block)
        eval_rows = cpt_rows(tokenizer, eval_items, "off" if packing == "blocks" else packing, block)
        eval_texts = list(eval_items)
    return _prepared(config, train_rows, eval_rows, eval_texts, source, stats, notes, packing, padding_free, tokenizer)


def _prepared(config, train_rows, eval_rows, eval_texts, source, stats, notes, packing, padding_free, tokenizer) -> PreparedData:
    if not train_rows:
        raise BabeltuneError(f"{config.data.train}: no training rows after tokenisation; check data.mode and the fields")
    train, evaluation = TokenRows(train_rows), (TokenRows(eval_rows) if eval_rows else None)
    stats.update(train_rows=len(train), train_tokens=train.token_count(),
                 eval_rows=len(evaluation or []), eval_tokens=evaluation.token_count() if evaluation else 0)
    collator = make_collator(packing, padding_free, tokenizer)
    return PreparedData(train, evaluation, collator, eval_texts, source, stats, notes)


def make_collator(packing: str, varlen: bool, tokenizer):
    if packing != "padding_free":
        return PadCollator(pad_id(tokenizer))
    return FlattenCollator() if varlen else PackedRowCollator(pad_id(tokenizer))


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return require_eos(tokenizer)
