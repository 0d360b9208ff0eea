"""LoRA adapter rules: r, use_rslora, lora_alpha, lora_dropout, target_modules, bias.

Rank and dropout follow the corpus size in tokens (measured under the model's own tokenizer);
alpha is decided together with rsLoRA so that it no longer depends on the rank.
"""

from __future__ import annotations

from babeltune.advisor.memory import module_shapes
from babeltune.advisor.rules.context import (
    BIDERMAN, LARGE_CORPUS_TOKENS, QLORA, RSLORA, SMALL_CORPUS_TOKENS, UNSLOTH_CPT, RuleContext, fmt_tokens,
)
from babeltune.advisor.types import Decision

# (upper bound on corpus tokens, rank): small corpora get a small rank (fewer parameters to overfit),
# large corpora a high one (Biderman et al. 2024: continued pretraining on billions of tokens needs
# high ranks to approach full fine-tuning).
RANK_BY_TOKENS = ((100_000, 4), (1_000_000, 8), (10_000_000, 16), (100_000_000, 32), (1_000_000_000, 64))
MAX_RANK = 128
LORA_ALPHA = 32.0   # Unsloth's continued-pretraining recipe (with rsLoRA)


def rule_r(ctx: RuleContext) -> Decision:
    tokens = ctx.tokens
    rank = next((r for limit, r in RANK_BY_TOKENS if tokens < limit), MAX_RANK)
    rank = min(rank, max(4, ctx.facts.hidden_size // 4))   # a rank near the hidden size is no longer low-rank
    bucket = next((f"< {fmt_tokens(limit)}" for limit, r in RANK_BY_TOKENS if tokens < limit), f">= {fmt_tokens(1e9)}")
    return Decision(rank, f"corpus = {fmt_tokens(tokens)} tokens ({bucket} tokens -> r={rank}); a low rank "
                          "limits overfitting on little data, high ranks pay off only with billions of tokens",
                    [BIDERMAN, QLORA])


def rule_use_rslora(ctx: RuleContext) -> Decision:
    r = ctx.value("r")
    return Decision(True, f"scale alpha/sqrt(r) keeps the update size stable across ranks, so r={r} can follow "
                          "corpus size without retuning the learning rate", [RSLORA, UNSLOTH_CPT])


def rule_lora_alpha(ctx: RuleContext) -> Decision:
    r, rslora = ctx.value("r"), ctx.value("use_rslora")
    scale = LORA_ALPHA / (r ** 0.5 if rslora else r)
    return Decision(LORA_ALPHA, (
        f"with rsLoRA alpha is rank-free: scale = {LORA_ALPHA:g}/sqrt({r}) = {scale:.2f}; the seeds' Hindi tables give "
        "16 and 64 for the same run, but alpha only multiplies the adapter's learning rate, so babeltune fixes "
        "alpha and sets learning_rate instead"), [RSLORA, UNSLOTH_CPT])


def rule_lora_dropout(ctx: RuleContext) -> Decision:
    tokens = ctx.tokens
    if tokens >= LARGE_CORPUS_TOKENS:
        value, why = 0.0, f">= {fmt_tokens(LARGE_CORPUS_TOKENS)}: the data itself regularises, and 0 enables Unsloth's fast path"
    elif tokens >= SMALL_CORPUS_TOKENS:
        value, why = 0.05, f"{fmt_tokens(SMALL_CORPUS_TOKENS)}-{fmt_tokens(LARGE_CORPUS_TOKENS)}: mild regularisation"
    else:
        value, why = 0.1, f"< {fmt_tokens(SMALL_CORPUS_TOKENS)}: repeated epochs on little data overfit"
    return Decision(value, f"corpus = {fmt_tokens(tokens)} tokens ({why})", [QLORA, BIDERMAN])


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
