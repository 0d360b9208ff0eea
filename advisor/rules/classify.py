"""The classify goal (`advise --goal classify`): the labelled set is read as `train` reads it (text and label
columns), counted per class, and a sample of examples is rendered as `train` feeds them (prompt + label + EOS,
trainer/classify.py) under the model's own tokenizer.

Classification then trains like sft (one example per row, loss on the label tokens only), so the size and
schedule rules run with the sft settings on these rendered lengths; this module adds the classify keys
(label column, verbalisers, prompt) with reasons citing the measured class counts, balance and lengths, and
restates the max_seq_length reason for classify (the text is cut at its end, the label always fits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from babeltune.advisor.types import Decision

SAMPLE_EXAMPLES = 2_000       # examples rendered for the length distribution (all of them below this)
UNBOUNDED = 1 << 30
IMBALANCED = 0.5              # smallest / largest class below this: accuracy flatters the majority class


@dataclass
class LabelledSet:
    """What `advise --goal classify` measured on the labelled set."""

    label_column: str
    counts: dict[str, int]                      # label (as the data writes it) -> examples, in class order
    lengths: Any = None                         # babeltune.advisor.sft.ExampleLengths of rendered examples
    label_tokens: dict[str, int] = field(default_factory=dict)
    prompt: str = "{text}\nLabel:"
    tokenizer: Optional[str] = None
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> rows left out (as train leaves them out)

    @property
    def examples(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"label_column": self.label_column, "examples_per_class": self.counts, "examples": self.examples,
                "label_tokens": self.label_tokens, "prompt": self.prompt, "skipped": self.skipped,
                "rendered": self.lengths.to_dict() if self.lengths is not None else None}


def measure_labelled(spec, label_column: str, model: str, tokenizer: Optional[str], *, seed: int = 0) -> LabelledSet:
    """Read every labelled example (counts), render a seeded sample as train does (lengths)."""
    from babeltune.advisor.sft import ExampleLengths, trainer_tokenizer
    from babeltune.config import DataConfig
    from babeltune.trainer import classify as cl

    skipped: list = []
    examples = cl.read_labelled(spec, label_column, skipped, option="--label-column")
    space = cl.label_space({}, [ex.label for ex in examples], spec.path, option="data.label_verbalizers")
    counts = cl.class_counts(examples, space)
    prompt = DataConfig(train="-").classify_prompt
    out = LabelledSet(label_column, counts, prompt=prompt, tokenizer=tokenizer or model)
    for skip in skipped:
        out.skipped[skip.reason] = out.skipped.get(skip.reason, 0) + (skip.count or 1)
    hf = trainer_tokenizer(model, tokenizer)
    if hf is None:
        return out
    ids = cl.label_token_ids(hf, space)
    out.label_tokens = {label: len(x) for label, x in zip(space.labels, ids)}
    rng = np.random.default_rng(seed)
    picked = examples if len(examples) <= SAMPLE_EXAMPLES else [examples[i] for i in sorted(
        rng.choice(len(examples), SAMPLE_EXAMPLES, replace=False))]
    lengths = ExampleLengths(records=len(examples), sampled=len(picked) < len(examples),
                             rendering=f"'{{text}}\\nLabel:' + ' ' + label + EOS, BOS as train adds it")
    eos = hf.eos_token_id if hf.eos_token_id is not None else 0
    for ex in picked:
        label = ids[space.index(ex.label)]
        row = cl.encode_example(hf, prompt, ex.text, label, UNBOUNDED, eos)
        lengths.totals.append(len(row["input_ids"]))
        lengths.first_trained.append(len(row["input_ids"]) - len(label) - 1)
        lengths.trained.append(len(label) + 1)
    out.lengths = lengths
    return out


def balance_reason(labelled: LabelledSet) -> str:
    counts, total = labelled.counts, labelled.examples
    smallest, largest = min(counts.values()), max(counts.values())
    majority = max(counts, key=counts.get)
    share = largest / total
    majority_f1 = (2 * share / (1 + share)) / len(counts)      # F1 of the majority class, 0 for the others
    listed = ", ".join(f"{label!r} {n:,} ({n / total:.1%})" for label, n in counts.items())
    ratio = smallest / largest
    verdict = ("balanced: accuracy and macro-F1 tell the same story" if ratio >= IMBALANCED else
               "imbalanced: accuracy flatters the majority class, judge by macro-F1 (eval --task classify reports both)")
    few = (f"; the smallest class has {smallest:,} examples, so one example moves its recall by {1 / smallest:.1%}"
           if smallest < 100 else "")
    left_out = "".join(f" ({n:,} left out: {reason})" for reason, n in labelled.skipped.items())
    return (f"{len(counts)} classes in {total:,} labelled examples{left_out}: {listed}; smallest/largest = {ratio:.2f}, "
            f"{verdict}; majority-class baseline ({majority!r}) = {share:.1%} accuracy, macro-F1 {majority_f1:.3f}{few}")


def verbalizer_reason(labelled: LabelledSet) -> str:
    tokens = ", ".join(f"{label!r} {n} token{'s' if n != 1 else ''}" for label, n in labelled.label_tokens.items())
    under = f" ({tokens} under {labelled.tokenizer or 'the model tokenizer'})" if tokens else ""
    return (f"auto: each label is trained as its own text{under}; the prediction is the label whose tokens the model "
            "finds most likely after the prompt, so words the model already knows (e.g. {'-1': negative, '0': neutral, "
            "'1': positive}) give the base model a meaningful starting score: set them here if the labels are codes")


def length_reason(labelled: LabelledSet, length: int) -> Optional[str]:
    lengths = labelled.lengths
    if lengths is None or not lengths.totals:
        return None
    totals = np.asarray(lengths.totals)
    p = {q: int(np.percentile(totals, q, method="higher")) for q in (50, 99)}
    cut = float((totals > length).mean())
    sampled = f", {len(totals):,} of {lengths.records:,} examples sampled" if lengths.sampled else ""
    return (f"rendered examples ({lengths.rendering}{sampled}): p50 {p[50]}, p99 {p[99]}, max {int(totals.max())} "
            f"tokens; at {length}: {cut:.1%} of examples have their text cut at its end (the label always fits)")


def apply_classify(decisions: dict[str, Decision], given: dict[str, Decision], labelled: LabelledSet) -> None:
    """The classify keys: decisions (shown in the table) and what the command gives (``given``), by config key."""
    decisions["data.label_column"] = Decision(labelled.label_column, balance_reason(labelled))
    decisions["data.label_verbalizers"] = Decision({}, verbalizer_reason(labelled))
    given["data.classify_prompt"] = Decision(labelled.prompt, "the text, a line break and 'Label:'; the label follows "
                                                              "after one space")
    given["data.mode"] = Decision("classify", "--goal classify: loss on the label tokens only (labels -100 on the prompt)")
    decisions["data.packing"] = Decision("off", "classify: one example per row, padded per batch (what train does)")
    rate = decisions.get("training.learning_rate")
    if rate is not None:
        decisions["training.learning_rate"] = Decision(rate.value, "classify: trained as sft (loss on the label tokens "
                                                       "only); " + rate.reason.removeprefix("sft: "), rate.evidence)
    length = decisions.get("model.max_seq_length")
    why = length_reason(labelled, length.value) if length is not None else None
    if why:
        decisions["model.max_seq_length"] = Decision(length.value, why, length.evidence)
