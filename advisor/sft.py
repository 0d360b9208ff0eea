"""sft corpora in `advise`: the data must fit the goal before anything is measured, the measurement reads the
text of each record, and example lengths are measured on what `train` feeds.

`train` renders an instruction/response record with the tokenizer's chat template (prompt + newline +
response without one), adds BOS/EOS and truncates at max_seq_length, cutting the end of the response
(trainer/data.py: record_segments, encode_sft). Lengths of the plain text miss the template's tokens, so
the truncation share they give is not the one training sees; here the trainer's own functions render a
random sample of records with the tokenizer training will use.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional

import numpy as np

from babeltune.corpus.reader import CorpusSpec, check_file, corpus_files, records_in_file
from babeltune.errors import BabeltuneError

SAMPLE_RECORDS = 2_000        # records rendered for the length distribution (all of them below this)
UNBOUNDED = 1 << 30


def data_fields():
    """The field names `train` reads (DataConfig defaults), as the trainer's functions expect them."""
    from babeltune.config import DataConfig

    return SimpleNamespace(data=DataConfig(train="-"))


def record_kind(record: dict, config) -> Optional[str]:
    data = config.data
    if isinstance(record.get(data.messages_field), list):
        return "messages"
    if isinstance(record.get(data.prompt_field), str) and isinstance(record.get(data.response_field), str):
        return "pairs"
    return None


def _wanted(config) -> str:
    d = config.data
    return f"'{d.prompt_field}' and '{d.response_field}' text fields or chat '{d.messages_field}'"


def _first_record(spec: CorpusSpec) -> Optional[tuple[Path, dict]]:
    for path in corpus_files(spec):
        if path.suffix.lower() == ".txt" or check_file(path) is not None:
            continue
        for record in records_in_file(path, spec):
            return path, record
    return None


def check_goal(spec: CorpusSpec, goal: str) -> None:
    """One error line, before any measuring, when the corpus cannot train for ``goal``."""
    config = data_fields()
    files = corpus_files(spec)
    if goal == "sft":
        plain = [path for path in files if path.suffix.lower() == ".txt"]
        if plain:
            raise BabeltuneError(
                f"--goal sft: {plain[0]} is plain text (.txt), but sft trains on records with {_wanted(config)}; "
                "use --goal cpt for raw text, or pass a .jsonl/.csv/.parquet corpus of such records")
        first = _first_record(spec)
        if first is not None and record_kind(first[1], config) is None:
            raise _fields_error(first[0], 1, first[1], config)
        return
    first = _first_record(spec)
    if first is not None and spec.text_field not in first[1] and record_kind(first[1], config) is not None:
        raise BabeltuneError(
            f"--goal cpt: {first[0]} holds instruction/response records (fields: {', '.join(map(str, first[1]))}) "
            f"and no '{spec.text_field}' field; pass --goal sft, or --text-field FIELD to train on one field as raw text")


def _fields_error(path: Path, number: int, record: dict, config) -> BabeltuneError:
    return BabeltuneError(
        f"--goal sft: {path} record {number} has no {_wanted(config)} (fields: "
        f"{', '.join(map(str, record)) or 'none'}); rename them, or use --goal cpt with --text-field for raw text")


def sft_documents(path: Path, spec: CorpusSpec, tally=None) -> Iterator[str]:
    """The text of each record (prompt and response, or the chat turns), as `train` scores it; a record
    without the sft fields is an error naming it."""
    from babeltune.trainer.data import record_plain_text

    config = data_fields()
    for number, record in enumerate(records_in_file(path, spec, tally), start=1):
        if record_kind(record, config) is None:
            raise _fields_error(path, number, record, config)
        text = record_plain_text(record, config)
        if text.strip():
            yield text.strip()


# --------------------------------------------------------------------------- lengths as `train` feeds them


@dataclass
class ExampleLengths:
    """Rendered example lengths: total tokens, position of the first trained token, trained tokens."""

    totals: list[int] = field(default_factory=list)
    first_trained: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    rendering: str = ""
    records: int = 0
    sampled: bool = False

    def at(self, length: int) -> dict:
        """What truncation at ``length`` does: examples that lose response tokens, that lose all of them
        (dropped by train), and the share of response tokens lost."""
        totals, first, trained = (np.asarray(x, dtype=np.int64) for x in (self.totals, self.first_trained, self.trained))
        if not len(totals):
            return {"truncated": 0.0, "dropped": 0.0, "lost_tokens": 0.0}
        lost = np.minimum(trained, np.maximum(0, totals - length))   # responses come last: the cut takes their end
        return {"truncated": float((totals > length).mean()), "dropped": float((first >= length).mean()),
                "lost_tokens": float(lost.sum() / max(1, trained.sum()))}

    def to_dict(self) -> dict:
        values = np.asarray(self.totals) if self.totals else np.zeros(1, dtype=np.int64)
        return {"rendering": self.rendering, "records": self.records, "sampled": self.sampled,
                "examples_measured": len(self.totals),
                "tokens_percentiles": {f"p{q}": int(np.percentile(values, q, method="higher")) for q in (50, 90, 95, 99)}
                | {"max": int(values.max())},
                "tokens_mean": round(float(values.mean()), 2)}


def trainer_tokenizer(model: str, tokenizer: Optional[str]):
    """The transformers tokenizer `train` will load (the --tokenizer folder/tokenizer.json, else the model's);
    None when it cannot be loaded here."""
    from babeltune.models.tokenizers import _gguf_tokenizer_dir, hf_tokenizer

    source = Path(tokenizer) if tokenizer and (Path(tokenizer).is_dir() or tokenizer.endswith("tokenizer.json")) else None
    if source is not None and source.is_file():
        source = source.parent
    if source is None:
        source = Path(model)
        if source.suffix.lower() == ".gguf" and source.is_file():
            source = _gguf_tokenizer_dir(source)
    try:
        return hf_tokenizer(str(source) if source.exists() else model)
    except BabeltuneError:
        return None


def sample_records(spec: CorpusSpec, seed: int) -> tuple[list[dict], int]:
    """A seeded uniform sample of at most SAMPLE_RECORDS records (bottom-k of random keys) and the count."""
    rng = np.random.default_rng(seed)
    heap: list[tuple[float, int, dict]] = []
    count = 0
    for path in corpus_files(spec):
        if check_file(path) is not None:
            continue
        for record in records_in_file(path, spec):
            key = -float(rng.random())
            if len(heap) < SAMPLE_RECORDS:
                heapq.heappush(heap, (key, count, record))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, count, record))
            count += 1
    return [record for _, _, record in sorted(heap, key=lambda item: item[1])], count


def measure_examples(spec: CorpusSpec, model: str, tokenizer: Optional[str], text_tokenizer, *,
                     seed: int = 0) -> ExampleLengths:
    """Render sampled records exactly as `train` does and measure them in tokens."""
    from babeltune.trainer.data import IGNORE_INDEX, encode_sft, record_segments

    records, count = sample_records(spec, seed)
    config, hf = data_fields(), trainer_tokenizer(model, tokenizer)
    out = ExampleLengths(records=count, sampled=count > len(records))
    if hf is None:
        out.rendering = (f"prompt + newline + response under {getattr(text_tokenizer, 'name', 'the tokenizer')}, "
                         "+ EOS (the model's transformers tokenizer could not be loaded here)")
        for record in records:
            prompt, response = _pair_texts(record, config)
            first, trained = (len(ids) for ids in text_tokenizer.encode_batch([prompt.rstrip() + "\n", response]))
            out.totals.append(first + trained + 1)
            out.first_trained.append(first)
            out.trained.append(trained + 1)
        return out
    out.rendering = ("the tokenizer's chat template" if getattr(hf, "chat_template", None)
                     else "prompt + newline + response (no chat template)") + ", BOS/EOS as train adds them"
    for number, record in enumerate(records, start=1):
        row = encode_sft(hf, record_segments(hf, record, config, f"{spec.path}: record {number}"), UNBOUNDED)
        labels = row["labels"] if row else []
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        out.totals.append(len(labels))
        out.first_trained.append(trained[0] if trained else len(labels))
        out.trained.append(len(trained))
    return out


def _pair_texts(record: dict, config) -> tuple[str, str]:
    data = config.data
    if record_kind(record, config) == "messages":
        turns = [m for m in record[data.messages_field] if isinstance(m, dict)]
        answer = [str(m.get("content", "")) for m in turns if m.get("role") == "assistant"]
        asked = [str(m.get("content", "")) for m in turns if m.get("role") != "assistant"]
        return "\n".join(asked), "\n".join(answer)
    return record[data.prompt_field], record[data.response_field]


__all__ = ["ExampleLengths", "check_goal", "measure_examples", "sft_documents"]
