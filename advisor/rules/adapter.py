"""LoRA adapter rules: r, use_rslora, lora_alpha, lora_dropout, target_modules, bias.

Rank and dropout follow the information in the corpus: its characters of unique text, English-equivalent
(RuleContext.text_size), never its tokens: a tokenizer that cuts the same text into 3x more pieces does not
make it 3x more data, and repeated documents add nothing. Alpha is decided together with rsLoRA so that it no
longer depends on the rank.
"""

from __future__ import annotations

from babeltune.advisor.memory import module_shapes
from babeltune.advisor.rules.context import (
    BIDERMAN, COMMON_GUIDES, HU_LORA, LARGE_CORPUS_CHARS, QLORA, RSLORA, SMALL_CORPUS_CHARS, UNSLOTH_CPT, RuleContext,
    fmt_tokens,
)
from babeltune.advisor.types import Decision

# (upper bound on English-equivalent characters of unique text, rank): small corpora get a small rank (fewer
# parameters to overfit), large corpora a high one (Biderman et al. 2024: continued pretraining on billions of
# tokens needs high ranks to approach full fine-tuning). The former token buckets (100k ... 1B tokens) x 5
# characters per English token, rounded (see context.LARGE_CORPUS_CHARS).
RANK_BY_TEXT = ((500_000, 4), (5_000_000, 8), (50_000_000, 16), (500_000_000, 32), (5_000_000_000, 64))
MAX_RANK = 128
LORA_ALPHA = 32.0   # Unsloth's continued-pretraining recipe (with rsLoRA)


def rule_r(ctx: RuleContext) -> Decision:
    size = ctx.text_size
    rank = next((r for limit, r in RANK_BY_TEXT if size < limit), MAX_RANK)
    rank = min(rank, max(4, ctx.facts.hidden_size // 4))   # a rank near the hidden size is no longer low-rank
    bucket = next((f"< {fmt_tokens(limit)}" for limit, r in RANK_BY_TEXT if size < limit),
                  f">= {fmt_tokens(RANK_BY_TEXT[-1][0])}")
    return Decision(rank, f"corpus = {ctx.size_note()}: {bucket} -> r={rank}; a low rank limits overfitting on "
                          "little data, high ranks pay off only with billions of characters", [BIDERMAN, QLORA])


def rule_use_rslora(ctx: RuleContext) -> Decision:
    r = ctx.value("r")
    return Decision(True, f"scale alpha/sqrt(r) keeps the update size stable across ranks, so r={r} can follow "
                          "corpus size without retuning the learning rate", [RSLORA, UNSLOTH_CPT])


def rule_lora_alpha(ctx: RuleContext) -> Decision:
    r, rslora = ctx.value("r"), ctx.value("use_rslora")
    scale = LORA_ALPHA / (r ** 0.5 if rslora else r)
    return Decision(LORA_ALPHA, (
        f"with rsLoRA alpha is rank-free: scale = {LORA_ALPHA:g}/sqrt({r}) = {scale:.2f}; common guides give 16 and 64 "
        "for similar runs (alpha = r or 2r), but alpha only scales the update (Hu et al. 2021: tuning alpha is "
        "roughly tuning the learning rate), so babeltune fixes alpha and sets learning_rate instead"),
                    [RSLORA, UNSLOTH_CPT, HU_LORA, COMMON_GUIDES])


def rule_lora_dropout(ctx: RuleContext) -> Decision:
    size = ctx.text_size
    if size >= LARGE_CORPUS_CHARS:
        value, why = 0.0, f">= {fmt_tokens(LARGE_CORPUS_CHARS)}: the data itself regularises, and 0 enables Unsloth's fast path"
    elif size >= SMALL_CORPUS_CHARS:
        value, why = 0.05, f"{fmt_tokens(SMALL_CORPUS_CHARS)}-{fmt_tokens(LARGE_CORPUS_CHARS)}: mild regularisation"
    else:
        value, why = 0.1, f"< {fmt_tokens(SMALL_CORPUS_CHARS)}: repeated epochs on little data overfit"
    return Decision(value, f"corpus = {ctx.size_note()}: {why}", [QLORA, BIDERMAN])


def rule_target_modules(ctx: RuleContext) -> Decision:
    modules = list(ctx.facts.linear_modules)
    return Decision(modules, (
        f"all {len(modules)} linear layers of {ctx.facts.model_type}: adapting only q/v (older guides) "
        "underfits; QLoRA found all-linear adapters needed to match full fine-tuning"), [QLORA, BIDERMAN])


def rule_bias(ctx: RuleContext) -> Decision:
    biases = ctx.facts.layers * sum(out for _, out in module_shapes(ctx.facts).values()) if ctx.facts.has_bias else 0
    return Decision("none", (f"{ctx.facts.model_type} has {biases:,} linear bias parameters; with bias='none' "
                             "disabling the adapter restores the base model exactly (trained biases would change it "
                             "for every task)"), [QLORA])
