"""Embedding rules: modules_to_save (train embed_tokens / lm_head in full) and embedding_learning_rate.

Unsloth's continued-pretraining recipe trains the embeddings and the output head when a model learns
a new language. That only pays off when (a) the tokenizer fits the language badly, so the model's
token embeddings for it are poorly trained, and (b) the corpus is large enough to move
vocab x hidden parameters without overfitting: at least one token of *unique* text per trained weight (a
corpus repeated 1,000 times is no larger). Both are measured here.
"""

from __future__ import annotations

from babeltune.advisor.memory import embedding_parameters
from babeltune.advisor.rules.context import (
    HOFFMANN, PETROV, UNSLOTH_CPT, RuleContext, fmt_tokens,
)
from babeltune.advisor.types import Decision

EMBEDDING_MODULES = ["embed_tokens", "lm_head"]
BAD_PREMIUM = 2.0                   # >= 2x the tokens English needs for the same text (Petrov et al. 2023)
BAD_TOKENS_PER_CHAR = {True: 0.5, False: 1.0}   # space-delimited scripts / scripts without spaces
MIN_EMBEDDING_TOKENS = 20_000_000   # floor; also at least one corpus token per trained embedding weight
EMBEDDING_LR_DIVISOR = 10           # Unsloth CPT recipe: 5e-5 for adapters, 5e-6 for embeddings


def tokenizer_fit(ctx: RuleContext) -> tuple[bool, str]:
    """(fits badly?, the measured figure that says so)."""
    return measured_fit(ctx.measurements, ctx.profile)


def measured_fit(m, profile) -> tuple[bool, str]:
    """The one test of tokenizer fit every reason and note uses: (fits badly?, the measured figure)."""
    if m.premium_vs_english is not None:
        return m.premium_vs_english >= BAD_PREMIUM, f"premium vs English = {m.premium_vs_english:.2f}x (bad >= {BAD_PREMIUM:g}x)"
    spaced = bool(getattr(profile, "space_delimited", True))
    limit = BAD_TOKENS_PER_CHAR[spaced]
    return m.tokens_per_char >= limit, f"{m.tokens_per_char:.3f} tokens/char (bad >= {limit:g} for this script)"


def rule_modules_to_save(ctx: RuleContext) -> Decision:
    bad_fit, fit_note = tokenizer_fit(ctx)
    params = embedding_parameters(ctx.facts, EMBEDDING_MODULES)
    needed = max(MIN_EMBEDDING_TOKENS, params)
    evidence = [UNSLOTH_CPT, PETROV, HOFFMANN]
    tokens = ctx.unique_tokens
    if ctx.goal != "cpt":
        first = ("; the tokenizer fits badly, so continued pretraining on raw text (--goal cpt) first would teach "
                 "the language's tokens" if bad_fit else "")
        return Decision([], f"sft teaches behaviour, not vocabulary; {fit_note}{first}", evidence)
    if not bad_fit:
        return Decision([], f"{fit_note}: the tokenizer fits, so its embeddings need no retraining", evidence)
    if tokens < needed:
        return Decision([], (f"{fit_note}, but corpus = {fmt_tokens(tokens)} tokens of unique text < {fmt_tokens(needed)} "
                             f"needed to retrain {fmt_tokens(params)} embedding weights without overfitting"), evidence)
    if not ctx.fits(modules_to_save=EMBEDDING_MODULES, batch_size=1, gradient_checkpointing=True,
                    load_in_4bit=True, optimizer="paged_adamw_8bit"):
        return Decision([], f"{fit_note} and {fmt_tokens(tokens)} tokens of unique text, but {fmt_tokens(params)} "
                            f"embedding weights do not fit in {ctx.gpu_memory_gib:g} GB", evidence)
    tied = "; tied in the base model, so the adapter keeps separate trained copies" if ctx.facts.tied_embeddings else ""
    return Decision(list(EMBEDDING_MODULES), (
        f"{fit_note} and corpus = {fmt_tokens(tokens)} tokens of unique text >= {fmt_tokens(needed)}: retrain "
        f"{fmt_tokens(params)} embedding/head weights for the language{tied}"), evidence)


def rule_embedding_learning_rate(ctx: RuleContext) -> Decision:
    if not ctx.value("modules_to_save"):
        return Decision(None, "no embeddings are trained (see modules_to_save)", [UNSLOTH_CPT])
    lr = ctx.value("learning_rate") / EMBEDDING_LR_DIVISOR
    return Decision(lr, (f"learning_rate / {EMBEDDING_LR_DIVISOR} = {lr:.1e}: full embedding rows move far "
                         "more per step than low-rank adapters"), [UNSLOTH_CPT])
