"""Sequence rules: max_seq_length, packing, flash_attention.

max_seq_length follows the document lengths measured in the model's own tokens (never a
per-language constant): a language the tokenizer fits badly has longer documents in tokens for
the same text, so it gets a longer sequence, not a shorter one as some guides say.

What the length means depends on the packing. cpt packs `blocks`: documents are joined with EOS and the
token stream is cut every max_seq_length tokens, wherever the cut falls, so covering the p95 document does
*not* keep documents whole: a 63-token tweet crosses a 128-token cut about half the time. What matters for
cpt is how many tokens train without the start of their own document (their context was cut away); the
length grows until that share is small -- but only while the corpus still fills the step floor with
multi-row steps (see grow_for_context): for a small corpus, longer rows mean fewer rows, and a step of one row
trains on one contiguous stretch of the token stream. sft keeps one example per row and truncates it: what matters is how
many responses lose tokens, measured on what the trainer feeds (see sft.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from babeltune.advisor.memory import minimum_gpu_gib
from babeltune.advisor.rules.context import (
    FLASH, MIN_SEQ_LEN, PADDING_FREE, PETROV, QLORA, RuleContext, round_up, tokens_per_char_note,
)
from babeltune.advisor.rules.shapes import MIN_ROWS_PER_STEP, MIN_STEPS, blocks_plan
from babeltune.advisor.types import Decision
from babeltune.errors import BabeltuneError

MAX_ADVISED_SEQ_LEN = 8192       # beyond this, attention cost dominates small LoRA runs
COVERAGE = {"cpt": "p95", "sft": "p99"}   # sft truncation cuts off responses, so cover more
MAX_CUT_CONTEXT = 0.10           # heuristic: at most this share of tokens trains without its document's start
MAX_GROWN_SEQ_LEN = 2048         # grow for context only up to here: attention cost per token grows with length


def block_cuts(lengths: list[int], block: int) -> tuple[float, float]:
    """Blocks packing simulated on the sampled documents (random order, + 1 EOS each): the share of documents
    that a cut falls inside, and the share of tokens after such a cut (trained without their document's start)."""
    if not lengths:
        return 0.0, 0.0
    sizes = np.asarray(lengths, dtype=np.int64) + 1
    ends = np.cumsum(sizes)
    starts = ends - sizes
    first_cut = (starts // block + 1) * block
    crossed = first_cut < ends
    cut_tokens = np.where(crossed, ends - first_cut, 0)
    return float(crossed.mean()), float(cut_tokens.sum() / ends[-1])


def seq_multiple(length: float) -> int:
    """Round to 64 up to 1024 tokens, to 128 above (tensor-core friendly, few wasted tokens)."""
    return round_up(length, 64) if length <= 1024 else round_up(length, 128)


def smallest_config_fits(ctx: RuleContext, seq_len: int) -> bool:
    """4-bit on one GPU, or (--gpus N) bf16 sharded over N GPUs."""
    smallest = dict(seq_len=seq_len, batch_size=1, gradient_checkpointing=True, modules_to_save=[])
    return ctx.fits(**smallest, load_in_4bit=True, optimizer="paged_adamw_8bit") or (
        ctx.gpus > 1 and ctx.fits(**smallest, load_in_4bit=False, optimizer="adamw_torch", shards=ctx.gpus))


def raise_nothing_fits(ctx: RuleContext) -> None:
    smallest = ctx.estimate(seq_len=MIN_SEQ_LEN, batch_size=1, gradient_checkpointing=True, load_in_4bit=True,
                            optimizer="paged_adamw_8bit", modules_to_save=[])
    need = minimum_gpu_gib(smallest)
    raise BabeltuneError(
        f"--gpu-memory: {ctx.gpu_memory_gib:g}GB is too small for {ctx.facts.name} (smallest configuration needs "
        f"{need} GiB: {smallest.describe()}; use a smaller model or a GPU with >= {need} GiB)")


@dataclass
class Growth:
    length: int
    stopped_by_corpus: Optional[int] = None   # the doubled length the corpus could not fill, if that stopped it
    rows_there: int = 0                       # training rows over all epochs at that doubled length


def corpus_rows(ctx: RuleContext, block: int) -> int:
    """Training rows over all planned epochs that blocks packing cuts at this block length."""
    from babeltune.advisor.rules.schedule import planned_epochs

    return blocks_plan(ctx, block).rows * planned_epochs(ctx)


def grow_for_context(ctx: RuleContext, lengths: list[int], length: int, limit: int) -> Growth:
    """Double the block length while too many tokens train without their document's start -- jointly with the
    schedule: only while the corpus, cut at the doubled length, still gives MIN_STEPS optimizer steps of at
    least MIN_ROWS_PER_STEP rows. The tokens per step are fixed by the corpus and the step floor whatever the
    length; what the length changes is how many rows share them. Growing a ~20 KB corpus to 512-1024 tokens
    left 40-80 rows for 50 steps: steps of one row (one contiguous stretch of the shuffled rows, the gradient
    from one place of the corpus) or a corpus 'too small to be worth a run' that was not too small at 128."""
    while length * 2 <= min(limit, MAX_GROWN_SEQ_LEN) and block_cuts(lengths, length)[1] > MAX_CUT_CONTEXT:
        rows = corpus_rows(ctx, length * 2)
        if rows < MIN_STEPS * MIN_ROWS_PER_STEP:
            return Growth(length, length * 2, rows)
        length *= 2
    return Growth(length)


def rendered_examples(ctx: RuleContext):
    """sft: the example lengths measured as train feeds them (advisor/sft.py), when they were measured."""
    examples = getattr(ctx.measurements, "example_lengths", None)
    return examples if ctx.goal == "sft" and examples is not None and examples.totals else None


def length_percentiles(ctx: RuleContext) -> dict:
    examples = rendered_examples(ctx)
    return ctx.measurements.sft_examples["tokens_percentiles"] if examples else ctx.measurements.doc_tokens_percentiles


def rule_max_seq_length(ctx: RuleContext) -> Decision:
    m = ctx.measurements
    key = COVERAGE[ctx.goal]
    percentiles = length_percentiles(ctx)
    percentile = percentiles.get(key) or percentiles.get("max") or MIN_SEQ_LEN
    covering = max(MIN_SEQ_LEN, seq_multiple(percentile))
    limit, limit_why = min(ctx.facts.context_length, MAX_ADVISED_SEQ_LEN), (
        f"context length {ctx.facts.context_length}" if ctx.facts.context_length <= MAX_ADVISED_SEQ_LEN
        else f"babeltune's cap {MAX_ADVISED_SEQ_LEN}")
    growth = grow_for_context(ctx, m.doc_token_lengths, covering, limit) if ctx.goal == "cpt" else Growth(covering)
    wanted = growth.length
    length, capped = min(wanted, limit), (f"; capped by {limit_why}" if wanted > limit else "")
    while not smallest_config_fits(ctx, length):
        if length <= MIN_SEQ_LEN:
            raise_nothing_fits(ctx)
        length = max(MIN_SEQ_LEN, seq_multiple(length // 2))
        capped = f"; cut to fit {ctx.gpu_memory_gib:g} GB"
    examples = rendered_examples(ctx)
    if examples is not None:
        return Decision(length, sft_note(examples, key, percentile, length, capped), [PETROV, QLORA])
    head = f"{key} = {percentile} tokens at {tokens_per_char_note(m)}{capped}"
    if ctx.goal == "cpt":
        note = blocks_note(m.doc_token_lengths, length, covering)
        if growth.stopped_by_corpus and length == wanted:
            note += corpus_stop_note(ctx, growth)
        return Decision(length, f"{head}; {note}", [PETROV])
    share = m.truncated_share(length)
    return Decision(length, f"{head}; {share:.1%} of documents truncated at {length}", [PETROV])


def sft_note(examples, key: str, percentile: int, length: int, capped: str) -> str:
    """What truncation at ``length`` does to the examples as train renders them."""
    cut = examples.at(length)
    sampled = f", {len(examples.totals):,} of {examples.records:,} records sampled" if examples.sampled else ""
    return (f"{key} = {percentile} tokens per example as train feeds it ({examples.rendering}{sampled}){capped}; "
            f"at {length}: {cut['truncated']:.1%} of examples lose response tokens ({cut['lost_tokens']:.1%} of all "
            f"response tokens) and {cut['dropped']:.1%} lose all of them (train drops those)")


def blocks_note(lengths: list[int], length: int, covering: int) -> str:
    """What blocks packing does to the documents at ``length`` (and at the p95 length, when it grew)."""
    crossed, cut = block_cuts(lengths, length)
    note = (f"blocks packing cuts the token stream every {length} tokens: {crossed:.0%} of documents cross a cut "
            f"and {cut:.0%} of tokens train without their document's start")
    if length > covering:
        crossed0, cut0 = block_cuts(lengths, covering)
        note += (f" (at {covering}, which covers p95: {crossed0:.0%} and {cut0:.0%}; grown while "
                 f"> {MAX_CUT_CONTEXT:.0%})")
    return note


def corpus_stop_note(ctx: RuleContext, growth: Growth) -> str:
    """Why the length did not grow further although blocks still cut > MAX_CUT_CONTEXT: the corpus."""
    from babeltune.advisor.rules.schedule import planned_epochs

    epochs = planned_epochs(ctx)
    return (f"; not grown to {growth.stopped_by_corpus}: the corpus would give only {growth.rows_there} rows of "
            f"{growth.stopped_by_corpus} tokens over {epochs} epoch{'s' if epochs > 1 else ''}, fewer than "
            f"{MIN_STEPS} steps x {MIN_ROWS_PER_STEP} rows (the step floor with multi-row steps)")


def rule_packing(ctx: RuleContext) -> Decision:
    m, length = ctx.measurements, ctx.value("max_seq_length")
    padding_waste = max(0.0, 1 - m.doc_tokens_mean / length) if length else 0.0
    if ctx.goal == "sft":
        examples = rendered_examples(ctx)
        mean = ctx.measurements.sft_examples["tokens_mean"] if examples else m.doc_tokens_mean
        padding_waste = max(0.0, 1 - mean / length) if length else 0.0
        return Decision("padding_free", (
            f"sft: mean {mean:.0f} tokens per example: one example per row would pad ~{padding_waste:.0%} "
            f"of each {length}-token row; whole examples packed into rows (positions restart at each, no attention "
            "across examples, prompt masking kept) waste none: 4.0x the real tokens/s of padded rows in "
            "bench/results/padding_mahasent.json (one example per row where the backend cannot)"), [QLORA, PADDING_FREE])
    crossed, _ = block_cuts(m.doc_token_lengths, length)
    return Decision("blocks", (
        f"documents joined with EOS and cut into {length}-token rows: no padding, {crossed:.0%} of documents split "
        f"across two rows and attention also reaches the previous documents; one document per row (mean "
        f"{m.doc_tokens_mean:.0f} tokens) would waste ~{padding_waste:.0%} on padding, padding_free keeps documents "
        f"apart but ran 1.6x slower (bench/results/padding_mahasent.json)"), [QLORA])


def rule_flash_attention(ctx: RuleContext) -> Decision:
    length, head_dim = ctx.value("max_seq_length"), ctx.facts.head_dim
    if head_dim > 256:
        return Decision("sdpa", f"head_dim = {head_dim} > 256 is not supported by FlashAttention-2; PyTorch SDPA "
                               "attention is used", [FLASH])
    return Decision("auto", (
        f"FlashAttention-2 when installed (else PyTorch SDPA): attention memory grows linearly, not with "
        f"{length}^2 tokens, and head_dim = {head_dim} is supported"), [FLASH])
