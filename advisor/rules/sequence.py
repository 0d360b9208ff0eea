"""Sequence rules: max_seq_length, packing, flash_attention.

max_seq_length follows the document lengths measured in the model's own tokens (never a
per-language constant): a language the tokenizer fits badly has longer documents in tokens for
the same text, so it gets a longer sequence, not a shorter one as the seeds' folklore says.
"""

from __future__ import annotations

from babeltune.advisor.memory import minimum_gpu_gib
from babeltune.advisor.rules.context import (
    FLASH, MIN_SEQ_LEN, PADDING_FREE, PETROV, QLORA, RuleContext, round_up, tokens_per_char_note,
)
from babeltune.advisor.types import Decision
from babeltune.errors import BabeltuneError

MAX_ADVISED_SEQ_LEN = 8192       # beyond this, attention cost dominates small LoRA runs
COVERAGE = {"cpt": "p95", "sft": "p99"}   # sft truncation cuts off responses, so cover more


def seq_multiple(length: float) -> int:
    """Round to 64 up to 1024 tokens, to 128 above (tensor-core friendly, few wasted tokens)."""
    return round_up(length, 64) if length <= 1024 else round_up(length, 128)


def smallest_config_fits(ctx: RuleContext, seq_len: int) -> bool:
    return ctx.fits(seq_len=seq_len, batch_size=1, gradient_checkpointing=True, load_in_4bit=True,
                    optimizer="paged_adamw_8bit", modules_to_save=[])


def raise_nothing_fits(ctx: RuleContext) -> None:
    smallest = ctx.estimate(seq_len=MIN_SEQ_LEN, batch_size=1, gradient_checkpointing=True, load_in_4bit=True,
                            optimizer="paged_adamw_8bit", modules_to_save=[])
    need = minimum_gpu_gib(smallest)
    raise BabeltuneError(
        f"--gpu-memory: {ctx.gpu_memory_gib:g}GB is too small for {ctx.facts.name} (smallest configuration needs "
        f"{need} GiB: {smallest.describe()}; use a smaller model or a GPU with >= {need} GiB)")


def rule_max_seq_length(ctx: RuleContext) -> Decision:
    m = ctx.measurements
    key = COVERAGE[ctx.goal]
    percentile = m.doc_tokens_percentiles.get(key) or m.doc_tokens_percentiles.get("max") or MIN_SEQ_LEN
    wanted = max(MIN_SEQ_LEN, seq_multiple(percentile))
    limit, limit_why = min(ctx.facts.context_length, MAX_ADVISED_SEQ_LEN), (
        f"context length {ctx.facts.context_length}" if ctx.facts.context_length <= MAX_ADVISED_SEQ_LEN
        else f"babeltune's cap {MAX_ADVISED_SEQ_LEN}")
    length, capped = min(wanted, limit), (f"; capped by {limit_why}" if wanted > limit else "")
    while not smallest_config_fits(ctx, length):
        if length <= MIN_SEQ_LEN:
            raise_nothing_fits(ctx)
        length = max(MIN_SEQ_LEN, seq_multiple(length // 2))
        capped = f"; cut to fit {ctx.gpu_memory_gib:g} GB"
    cut = "split across blocks" if ctx.goal == "cpt" else "truncated"
    share = m.truncated_share(length)
    return Decision(length, (
        f"{key} = {percentile} tokens at {tokens_per_char_note(m)}{capped}; {share:.1%} of documents {cut} at "
        f"{length}"), [PETROV])


def rule_packing(ctx: RuleContext) -> Decision:
    m, length = ctx.measurements, ctx.value("max_seq_length")
    padding_waste = max(0.0, 1 - m.doc_tokens_mean / length) if length else 0.0
    if ctx.goal == "sft":
        return Decision("padding_free", (
            f"sft: mean {m.doc_tokens_mean:.0f} tokens per example: one example per row would pad ~{padding_waste:.0%} "
            f"of each {length}-token row; whole examples packed into rows (positions restart at each, no attention "
            "across examples, prompt masking kept) waste none: 4.0x the real tokens/s of padded rows in "
            "bench/results/padding_mahasent.json (one example per row where the backend cannot)"), [QLORA, PADDING_FREE])
    return Decision("blocks", (
        f"mean document = {m.doc_tokens_mean:.0f} tokens vs {length}-token sequences: one document per row "
        f"would waste ~{padding_waste:.0%} on padding; concatenating with EOS wastes none"), [QLORA])


def rule_flash_attention(ctx: RuleContext) -> Decision:
    length, head_dim = ctx.value("max_seq_length"), ctx.facts.head_dim
    if head_dim > 256:
        return Decision(False, f"head_dim = {head_dim} > 256 is not supported by FlashAttention-2; PyTorch SDPA "
                               "attention is used", [FLASH])
    return Decision(True, (
        f"FlashAttention-2 when installed (else PyTorch SDPA): attention memory grows linearly, not with "
        f"{length}^2 tokens, and head_dim = {head_dim} is supported"), [FLASH])
