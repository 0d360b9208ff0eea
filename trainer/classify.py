"""Classification with any causal LM (data.mode: classify, `babeltune eval --task classify`).

Training: each labelled example becomes ``classify_prompt`` with the text filled in, then one space and the
label's verbaliser (a short text such as "negative"), then EOS; the loss is on the verbaliser and EOS only
(labels -100 on the prompt, as sft does), so every causal-LM backend (LoRA, IA3 + BitFit) trains it.

Prediction: the log-likelihood of each label's verbaliser tokens after the prompt, summed over those tokens;
the label with the highest sum wins. Nothing is generated and no free text is parsed. Prompt and label are
tokenised apart and joined, identically in training and scoring, so the label tokens scored are exactly the
ones trained. A verbaliser whose tokens begin another's would always score at least as high, so it is refused.

Labels are read with the advisor's corpus reader (CSV/TSV, JSONL, parquet; skips counted and reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from babeltune.errors import BabeltuneError

if TYPE_CHECKING:
    from babeltune.config import TrainConfig

IGNORE_INDEX = -100
MAX_AUTO_LABELS = 100      # more distinct values than this without verbalisers: not a label column


@dataclass
class Example:
    text: str
    label: str


@dataclass
class LabelSpace:
    """The classes, in a fixed order: the label values as the data writes them and their verbalisers."""

    labels: list[str]
    verbalizers: list[str]

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def to_dict(self) -> dict[str, str]:
        return dict(zip(self.labels, self.verbalizers))


# --------------------------------------------------------------------------------------------- reading


def label_text(value: Any) -> str:
    """A label as text: CSV gives strings, JSONL may give numbers (-1, 1); both read "-1", "1"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _label_order(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _missing_label_column(path: Path, label_column: str, row: dict, option: str) -> BabeltuneError:
    from babeltune.corpus.records import shown

    fields = ", ".join(map(shown, row)) or "none"
    return BabeltuneError(f"corpus: {path}: no label column {label_column!r} (columns: {fields}); "
                          f"set {option} to the column that holds the labels")


def _labelled_rows(path: Path, spec, label_column: str, option: str, tally) -> Iterator[Example]:
    """The (text, label) rows of one file; rows with an empty text or label are skipped and counted."""
    from babeltune.corpus import reader as corpus, records

    if path.suffix.lower() == ".txt":
        raise BabeltuneError(f"corpus: {path} is plain text (.txt) and holds no labels; classification reads "
                             "CSV/TSV, JSONL or parquet with a text column and a label column")
    column, rows = corpus._file_rows(path, spec, tally)
    for row in rows:
        if label_column not in row:
            raise _missing_label_column(path, label_column, row, option)
        text = records.row_text(row, column, path, spec).strip()
        label = label_text(row[label_column])
        if not text:
            tally.skip("row with an empty text", unit="row")
        elif not label:
            tally.skip(f"row with an empty label ({label_column!r})", unit="row")
        else:
            yield Example(text, label)


def read_labelled(spec, label_column: str, skipped: Optional[list] = None, *, option: str = "data.label_column",
                  limit: Optional[int] = None) -> list[Example]:
    """Every labelled example of ``spec`` (a CorpusSpec; a file or folder), in file order. What is skipped goes
    to ``skipped`` as for every other corpus (or stops the run under strict)."""
    from babeltune.corpus.reader import _guarded, usable_files
    from babeltune.corpus.readlog import ReadTally

    skipped = [] if skipped is None else skipped
    examples: list[Example] = []
    for path in usable_files(spec, skipped):
        tally = ReadTally(strict=spec.strict)
        for example in _guarded(_labelled_rows(path, spec, label_column, option, tally), path, spec, tally, skipped):
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                return examples
    if not examples:
        reasons = "; ".join(sorted({s.reason for s in skipped})) or "no rows"
        raise BabeltuneError(f"corpus: {spec.path}: no labelled examples ({reasons}); point it at CSV/JSONL/parquet "
                             f"rows with a text and a {label_column!r} column")
    return examples


def label_space(verbalizers: dict[str, str], observed, source: str, option: str = "data.label_verbalizers") -> LabelSpace:
    """The classes: the verbaliser map's order when given (every observed label must be in it), else the
    observed labels sorted (numbers numerically), each its own verbaliser."""
    seen = sorted(set(observed), key=_label_order)
    if verbalizers:
        unknown = [label for label in seen if label not in verbalizers]
        if unknown:
            raise BabeltuneError(f"{source}: label {unknown[0]!r} is not in {option} ({', '.join(map(repr, verbalizers))}); "
                                 "add a verbaliser for it")
        return LabelSpace(list(verbalizers), [verbalizers[label].strip() for label in verbalizers])
    if len(seen) < 2:
        raise BabeltuneError(f"{source}: every example has the label {seen[0]!r}; classification needs at least two "
                             "classes (is the label column right?)")
    if len(seen) > MAX_AUTO_LABELS:
        raise BabeltuneError(f"{source}: {len(seen):,} distinct labels (first: {seen[0]!r}); that is no label column: "
                             f"check the label column, or list the labels in {option}")
    return LabelSpace(seen, list(seen))


# --------------------------------------------------------------------------------------------- encoding


def label_token_ids(tokenizer, space: LabelSpace) -> list[list[int]]:
    """Token ids of " verbaliser" for each class; refused when one class's ids begin another's."""
    ids = [list(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) for text in space.verbalizers]
    for i, first in enumerate(ids):
        if not first:
            raise BabeltuneError(f"label_verbalizers: {space.verbalizers[i]!r} tokenises to nothing; use a word")
        for j, second in enumerate(ids):
            if i != j and second[:len(first)] == first:
                raise BabeltuneError(
                    f"label_verbalizers: the tokens of {space.verbalizers[i]!r} begin those of {space.verbalizers[j]!r}, "
                    "so it would always score at least as high; choose verbalisers that differ from the first token")
    return ids


def prompt_ids(tokenizer, template: str, text: str, room: int) -> list[int]:
    """The prompt's tokens (BOS as the tokenizer adds it), the text cut at its end to leave ``room`` tokens."""
    head, tail = template.split("{text}")
    text_ids = list(tokenizer(head + text, add_special_tokens=True)["input_ids"])
    tail_ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else []
    return text_ids[:max(1, room - len(tail_ids))] + tail_ids


def encode_example(tokenizer, template: str, text: str, label_ids: list[int], block: int, eos: int) -> dict:
    """Prompt + label + EOS, loss on the label and EOS only; the text is cut so that the label always fits."""
    room = block - len(label_ids) - 1
    if room < 2:
        raise BabeltuneError(f"model.max_seq_length: {block} tokens leave no room for a prompt before a "
                             f"{len(label_ids)}-token label; raise it")
    prompt = prompt_ids(tokenizer, template, text, room)
    return {"input_ids": prompt + label_ids + [eos], "labels": [IGNORE_INDEX] * len(prompt) + label_ids + [eos]}


# --------------------------------------------------------------------------------------------- training data


def class_counts(examples: list[Example], space: LabelSpace) -> dict[str, int]:
    counts = {label: 0 for label in space.labels}
    for example in examples:
        counts[example.label] += 1
    return counts


def prepare_classify(config: "TrainConfig", tokenizer, packing: str, notes: list[str]):
    """data.mode classify -> PreparedData (rows with -100 on the prompt, a pad collator)."""
    from babeltune.trainer import data as td

    skipped: list = []
    label_column = config.data.label_column
    train = read_labelled(td.corpus_spec(config, config.data.train), label_column, skipped)
    read_count = len(train)
    key = td.dedup_key(config)
    train, removed = td.remove_duplicates(train, (lambda ex: key(ex.text)) if key else None)
    if config.data.dedup != "off":
        notes.append(f"data.dedup {config.data.dedup}: removed {removed:,} of {read_count:,} training examples "
                     f"({removed / read_count:.1%}) as repeats of an earlier one")
    if config.data.eval:
        held = read_labelled(td.corpus_spec(config, config.data.eval), label_column, skipped)
        source = f"data.eval ({config.data.eval})"
    else:
        train, held = td.split_heldout(train, lambda ex: ex.text, config.data.eval_fraction)
        source = f"hash split of data.train (eval_fraction {config.data.eval_fraction})"
    held = held[:config.eval.max_eval_documents]
    space = label_space(config.data.label_verbalizers, [ex.label for ex in train + held], config.data.train)
    ids = label_token_ids(tokenizer, space)
    eos, block, template = td.require_eos(tokenizer), config.model.max_seq_length, config.data.classify_prompt

    def rows(examples):
        return [encode_example(tokenizer, template, ex.text, ids[space.index(ex.label)], block, eos) for ex in examples]

    train_rows, eval_rows = rows(train), rows(held)
    if packing == "padding_free":
        train_rows = td.pack_examples(train_rows, block)
    counts = class_counts(train, space)
    stats = {"train_documents": len(train), "eval_documents": len(held), "packing": packing,
             "dedup": config.data.dedup, "dedup_removed": removed, "label_column": label_column,
             "label_verbalizers": space.to_dict(), "train_examples_per_class": counts,
             "eval_examples_per_class": class_counts(held, space)}
    td.reading_report(skipped, notes, stats)
    notes.append("classify: " + ", ".join(f"{label!r} -> {verb!r} ({counts[label]:,} train examples)"
                                          for label, verb in zip(space.labels, space.verbalizers))
                 + "; loss on the label tokens only")
    return train_rows, eval_rows, [ex.text for ex in held], source, stats


# --------------------------------------------------------------------------------------------- scoring


def _batched_pairs(prompts: list[list[int]], label_ids: list[list[int]], batch_examples: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(prompts), batch_examples):
        yield start, [(i, c) for i in range(start, min(start + batch_examples, len(prompts))) for c in range(len(label_ids))]


def score_labels(model, tokenizer, texts: list[str], space: LabelSpace, template: str, *, batch_size: int = 8,
                 max_length: int = 512, on_examples: Optional[Callable[[int], None]] = None):
    """[len(texts), classes] summed log-probabilities of each class's verbaliser tokens after the prompt.
    Rows (one per example and class) are left-padded, so every label ends the row and only the last
    max-label-length logits are computed (``logits_to_keep``), not a vocabulary-wide row per token."""
    import torch

    ids = label_token_ids(tokenizer, space)
    longest = max(len(x) for x in ids)
    prompts = [prompt_ids(tokenizer, template, text, max_length - longest) for text in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    scores = torch.empty(len(texts), len(ids), dtype=torch.float64)
    for start, pairs in _batched_pairs(prompts, ids, max(1, batch_size)):
        rows = [prompts[i] + ids[c] for i, c in pairs]
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = _tail_logits(model, input_ids, mask, positions, longest + 1)
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)       # position k predicts token k+1 of the tail
        for row, (i, c) in enumerate(pairs):
            label = torch.tensor(ids[c], device=device)
            offset = longest - len(ids[c])
            picked = logprobs[row, offset + torch.arange(len(ids[c]), device=device), label]
            scores[i, c] = float(picked.double().sum())
        if on_examples is not None:
            on_examples(len(pairs) // len(ids))
    return scores


def _tail_logits(model, input_ids, mask, positions, keep: int):
    """Logits of the last ``keep`` positions; models without ``logits_to_keep`` compute all and are sliced."""
    import torch

    with torch.no_grad():
        try:
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
        except TypeError:       # an older or custom forward without logits_to_keep
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -keep:].float()


# --------------------------------------------------------------------------------------------- metrics


def confusion_matrix(gold: list[int], predicted: list[int], classes: int) -> list[list[int]]:
    """matrix[g][p]: examples of class g predicted as p."""
    matrix = [[0] * classes for _ in range(classes)]
    for g, p in zip(gold, predicted):
        matrix[g][p] += 1
    return matrix


def accuracy(gold: list[int], predicted: list[int]) -> float:
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold) if gold else 0.0


def macro_f1(gold: list[int], predicted: list[int], classes: int) -> float:
    """Mean F1 over the classes that occur in the gold labels or the predictions (sklearn's default label
    set); F1 = 2TP / (2TP + FP + FN), 0 for a class never predicted correctly."""
    matrix = confusion_matrix(gold, predicted, classes)
    present = [c for c in range(classes) if sum(matrix[c]) or sum(row[c] for row in matrix)]
    if not present:
        return 0.0
    f1s = []
    for c in present:
        tp = matrix[c][c]
        fp = sum(row[c] for row in matrix) - tp
        fn = sum(matrix[c]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


@dataclass
class Scores:
    accuracy: float
    macro_f1: float
    confusion: list[list[int]] = field(default_factory=list)
    gold_logprob: Optional[float] = None      # mean summed log-probability of the gold label's tokens

    @classmethod
    def of(cls, gold: list[int], predicted: list[int], classes: int, gold_logprob: Optional[float] = None) -> "Scores":
        return cls(accuracy(gold, predicted), macro_f1(gold, predicted, classes), confusion_matrix(gold, predicted, classes),
                   gold_logprob)

    def to_dict(self) -> dict:
        out = {"accuracy": round(self.accuracy, 4), "macro_f1": round(self.macro_f1, 4), "confusion": self.confusion}
        if self.gold_logprob is not None:
            out["mean_gold_label_logprob"] = round(self.gold_logprob, 6)
        return out


def majority_baseline(gold: list[int], classes: int) -> tuple[int, Scores]:
    """Always predicting the most frequent class of ``gold`` (ties: the first class)."""
    counts = [gold.count(c) for c in range(classes)]
    majority = counts.index(max(counts))
    return majority, Scores.of(gold, [majority] * len(gold), classes)


def predictions(scores) -> list[int]:
    return [int(row.argmax()) for row in scores]


def mean_gold_logprob(scores, gold: list[int]) -> float:
    return float(sum(float(scores[i, g]) for i, g in enumerate(gold)) / max(1, len(gold)))
