"""What the batch, steps and micro-batch rules share: how fast the target device runs a shape (the measured
throughput table, babeltune.advisor.throughput) and how many training rows `train` will build from the corpus.

Rows are planned the way trainer/data.py builds them, so that `advise` and `train` count the same optimizer
steps: the hash split holds out ``eval_fraction`` of the documents, every document gets an EOS, and
  blocks        the token stream is cut into whole max_seq_length rows (the remainder is dropped);
  padding_free  whole documents are packed greedily in order into rows of at most max_seq_length;
  off           one document per row (longer ones split into max_seq_length pieces).
The packing rates come from the sampled document lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from babeltune.advisor.rules.context import RuleContext

REFERENCE_GPU = "h100"          # the GPU with the most measurements: the efficiency curve of an unnamed GPU
CPU = "cpu"
MIN_STEPS = 50                  # heuristic floor: a warmup, a cosine decay and ~10 evaluations need this many steps
# heuristic: an optimizer step averages at least this many rows. A blocks row is one contiguous stretch of the
# token stream (neighbouring documents of the file); the HF Trainer shuffles rows, so rows per step = places of
# the corpus per gradient. The cpt length grows for context only while the corpus fills MIN_STEPS such steps.
MIN_ROWS_PER_STEP = 8
EOS_PER_DOCUMENT = 1            # trainer/data.py appends an EOS to every document (and sft example)


def eval_fraction() -> float:
    from babeltune.config import DataConfig

    return DataConfig.model_fields["eval_fraction"].default


class FlatCurve:
    """CPU: tokens/s does not grow with the micro-batch (no launch overhead to amortise), so every shape is
    equally efficient; the run length is sized from the measured probe instead."""

    gpu = CPU
    peak_tokens = 1

    def efficiency(self, tokens: float) -> float:
        return 1.0

    def smallest_tokens_reaching(self, share: float, minimum: int = 1) -> int:
        return minimum

    def basis(self) -> str:
        return "CPU: throughput is flat in the batch size"


def gpu_name(ctx: RuleContext) -> str:
    return ctx.gpu or REFERENCE_GPU


def gpu_curve(ctx: RuleContext, packing: Optional[str] = None):
    """Tokens/s of this model on the target device against tokens per micro-step."""
    if ctx.gpu == CPU:
        return FlatCurve()
    from babeltune.advisor.throughput import load_table, shape_curve

    packing = packing or ctx.decided("packing", "blocks")
    return shape_curve(load_table(), gpu_name(ctx), ctx.facts.parameters, backend="hf-peft", packing=packing)


def device_label(ctx: RuleContext) -> str:
    if ctx.gpu == CPU:
        return "this CPU"
    if ctx.gpu is None:
        return f"an {REFERENCE_GPU.upper()} (the measured reference; --gpu names yours)"
    return f"an {ctx.gpu.upper()}" if ctx.gpu[0] in "ahl" else f"a {ctx.gpu.upper()}"


@dataclass
class RowPlan:
    """Training rows per epoch as `train` will build them."""

    documents: int            # training documents after the held-out split
    rows: int                 # rows of at most max_seq_length tokens
    tokens: int               # training tokens per epoch (with EOS)
    packing: str

    @property
    def tokens_per_row(self) -> float:
        return self.tokens / max(1, self.rows)


def greedy_rows(lengths: list[int], block: int, split: bool = True) -> int:
    """Rows that trainer.data's padding-free packing fills with documents of these lengths (cpt splits long
    documents into block-sized pieces; sft examples are truncated to the block)."""
    rows, current = 0, 0
    for length in lengths:
        if split:
            pieces = [block] * (length // block) + ([length % block] if length % block else [])
        else:
            pieces = [min(length, block)]
        for piece in pieces:
            if current and current + piece > block:
                rows, current = rows + 1, 0
            current += piece
    return rows + (1 if current else 0)


def rows_per_document(ctx: RuleContext, packing: str, block: int) -> float:
    """Rows per document for packing off/padding_free, from the sampled document lengths (+ EOS)."""
    split = ctx.goal == "cpt"     # sft examples are truncated, never split
    if packing == "off" and not split:
        return 1.0
    lengths = [n + EOS_PER_DOCUMENT for n in ctx.measurements.doc_token_lengths]
    if not lengths:
        mean = ctx.measurements.doc_tokens_mean + EOS_PER_DOCUMENT
        return math.ceil(mean / block) if packing == "off" else min(mean, block) / block
    if packing == "off":
        return sum(math.ceil(n / block) for n in lengths) / len(lengths)
    return greedy_rows(lengths, block, split) / len(lengths)


def blocks_plan(ctx: RuleContext, block: int) -> RowPlan:
    """Rows per epoch that blocks packing cuts from the training split at this block length."""
    documents = max(1, round(ctx.train_documents * (1 - eval_fraction())))   # what train keeps after data.dedup
    tokens = round(ctx.train_tokens * (1 - eval_fraction())) + documents * EOS_PER_DOCUMENT
    rows = max(1, tokens // block)
    return RowPlan(documents, rows, min(tokens, rows * block), "blocks")


def planned_rows(ctx: RuleContext) -> RowPlan:
    block, packing = ctx.value("max_seq_length"), ctx.value("packing")
    if packing == "blocks":
        return blocks_plan(ctx, block)
    keep = 1 - eval_fraction()
    documents = max(1, round(ctx.train_documents * keep))        # what train keeps after data.dedup
    tokens = round(ctx.train_tokens * keep) + documents * EOS_PER_DOCUMENT
    rows = max(1, math.ceil(documents * rows_per_document(ctx, packing, block)))
    return RowPlan(documents, rows, tokens, packing)


def steps_for(rows: int, batch: int, epochs: float) -> int:
    """Optimizer steps the HF Trainer runs: ceil(epochs x ceil(rows / batch)) (the last batch may be short)."""
    return max(1, math.ceil(epochs * max(1, math.ceil(rows / batch))))
