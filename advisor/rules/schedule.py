"""Optimisation rules: batch_size (effective), num_train_epochs, max_steps, learning_rate,
weight_decay, lr_scheduler_type, warmup_ratio.

Epochs follow the information in the corpus (characters of unique text, English-equivalent), like rank and
dropout; steps follow the tokens the trainer will see per epoch (after dedup) and the tokens per optimizer
step; the learning rate follows the goal (cpt/sft), the rsLoRA scale and the model size.
"""

from __future__ import annotations

import math

from babeltune.advisor.rules.context import (
    BIDERMAN, COMMON_GUIDES, HOFFMANN, LARGE_CORPUS_CHARS, LOSHCHILOV, MUENNIGHOFF, QLORA, RSLORA, SMALL_CORPUS_CHARS,
    UNSLOTH_CPT, RuleContext, floor_power_of_two, fmt_tokens,
)
from babeltune.advisor.types import Decision

TARGET_STEPS = 200                       # enough optimizer steps for warmup, decay and ~10 evaluations
MAX_TOKENS_PER_STEP = {"cpt": 65_536, "sft": 32_768}
MAX_SFT_EXAMPLES_PER_STEP = 16           # QLoRA used 16
# Learning rate x lora_alpha under rsLoRA (the rank-free update size):
#   cpt: Unsloth CPT recipe, lr 5e-5 at alpha 32 with rsLoRA;
#   sft: Unsloth/QLoRA-style 2e-4 at r=16, alpha=16 without rsLoRA = rsLoRA alpha 4 -> 8e-4.
LR_TIMES_ALPHA = {"cpt": 5e-5 * 32, "sft": 2e-4 * 4}
LARGE_MODEL_PARAMS = 20e9                # QLoRA halved the learning rate for 33B/65B models


def planned_epochs(ctx: RuleContext) -> int:
    """Repeat small corpora (up to ~4 epochs is almost as good as fresh data), one pass over large ones; by
    the information in the corpus (ctx.text_size), whatever the tokenizer."""
    if ctx.text_size >= LARGE_CORPUS_CHARS:
        return 1
    return 2 if ctx.text_size >= SMALL_CORPUS_CHARS else 3


def steps_per_epoch(ctx: RuleContext) -> int:
    """Optimizer steps per pass over what the trainer keeps (after data.dedup)."""
    batch = ctx.value("batch_size")
    if ctx.value("packing") == "off":
        return max(1, math.ceil(ctx.train_documents / batch))
    return max(1, math.ceil(ctx.train_tokens / (batch * ctx.value("max_seq_length"))))


def rule_batch_size(ctx: RuleContext) -> Decision:
    length, epochs, tokens = ctx.value("max_seq_length"), planned_epochs(ctx), ctx.train_tokens
    if ctx.value("packing") == "off":
        wanted = ctx.train_documents * epochs / TARGET_STEPS
        size = floor_power_of_two(min(max(wanted, 1), MAX_SFT_EXAMPLES_PER_STEP))
        return Decision(size, (f"{ctx.train_documents:,} examples x {epochs} epochs / {TARGET_STEPS} target "
                               f"steps -> {size} examples per optimizer step (cap {MAX_SFT_EXAMPLES_PER_STEP})"), [QLORA])
    cap = MAX_TOKENS_PER_STEP[ctx.goal]
    wanted = min(max(tokens * epochs / TARGET_STEPS, length), cap)
    size = floor_power_of_two(wanted / length)
    return Decision(size, (f"{fmt_tokens(tokens)} tokens x {epochs} epochs / {TARGET_STEPS} target steps -> "
                           f"{size} x {length} = {size * length:,} tokens per optimizer step (cap {cap:,})"),
                    [UNSLOTH_CPT, HOFFMANN])


def rule_num_train_epochs(ctx: RuleContext) -> Decision:
    epochs, steps = planned_epochs(ctx), steps_per_epoch(ctx)
    bucket = (f">= {fmt_tokens(LARGE_CORPUS_CHARS)}" if epochs == 1 else
              f"{fmt_tokens(SMALL_CORPUS_CHARS)}-{fmt_tokens(LARGE_CORPUS_CHARS)}" if epochs == 2 else
              f"< {fmt_tokens(SMALL_CORPUS_CHARS)}")
    few = f"; only {steps * epochs} optimizer steps: more text would help more than more epochs" if steps * epochs < 50 else ""
    return Decision(float(epochs), (f"corpus = {ctx.size_note()}: {bucket} -> {epochs} epoch{'s' if epochs > 1 else ''} "
                                    f"of {fmt_tokens(ctx.train_tokens)} tokens = {steps} steps each; repeating up to "
                                    f"~4x is nearly as good as new data; early stopping guards overfitting{few}"),
                    [MUENNIGHOFF])


def rule_max_steps(ctx: RuleContext) -> Decision:
    epochs, steps = ctx.value("num_train_epochs"), steps_per_epoch(ctx)
    total = math.ceil(steps * epochs)
    return Decision(None, (f"num_train_epochs wins: {epochs:g} epoch{'s' if epochs > 1 else ''} x {steps} steps = {total} optimizer steps; "
                           "set one or the other (train --max-steps N replaces epochs)"), [MUENNIGHOFF])


def total_steps(ctx: RuleContext) -> int:
    return max(1, math.ceil(steps_per_epoch(ctx) * ctx.value("num_train_epochs")))


def rule_learning_rate(ctx: RuleContext) -> Decision:
    alpha, r = ctx.value("lora_alpha"), ctx.value("r")
    lr = LR_TIMES_ALPHA[ctx.goal] / alpha
    size_note = ""
    if ctx.facts.parameters >= LARGE_MODEL_PARAMS:
        lr /= 2
        size_note = f"; halved for {ctx.facts.parameters / 1e9:.0f}B parameters"
    goal_note = ("cpt on raw text moves the model further than sft (Unsloth's CPT recipe: 5e-5 at alpha 32)"
                 if ctx.goal == "cpt" else
                 "sft teaches a response format, a smaller change than cpt (common guides: 2e-4 at r = alpha = 16)")
    return Decision(float(f"{lr:.2g}"), (
        f"{ctx.goal}: lr x alpha = {LR_TIMES_ALPHA[ctx.goal]:.1e} under rsLoRA -> {LR_TIMES_ALPHA[ctx.goal]:.1e}/{alpha:g} "
        f"= {lr:.1e} at any r (here {r}); {goal_note}{size_note}; the 2e-5 some guides give for 'low-resource' "
        "languages confuses corpus size (handled by r, dropout, epochs) with step size"),
                    [UNSLOTH_CPT, RSLORA, QLORA, BIDERMAN, COMMON_GUIDES])


def rule_weight_decay(ctx: RuleContext) -> Decision:
    epochs = ctx.value("num_train_epochs")
    if epochs > 1:
        return Decision(0.01, (f"{epochs:g} epochs over {ctx.size_note()} repeat the data: a little "
                               "decay pulls the adapter back toward the base model"), [LOSHCHILOV])
    return Decision(0.0, f"one pass over {ctx.size_note()} never repeats data; QLoRA used no decay",
                    [QLORA, LOSHCHILOV])


def rule_lr_scheduler_type(ctx: RuleContext) -> Decision:
    steps = total_steps(ctx)
    return Decision("cosine", f"cosine decay to 0 over the {steps} planned optimizer steps, as in Unsloth's "
                              "continued-pretraining recipe", [UNSLOTH_CPT])


def rule_warmup_ratio(ctx: RuleContext) -> Decision:
    steps = total_steps(ctx)
    ratio = 0.1 if ctx.value("modules_to_save") else (0.05 if ctx.goal == "cpt" else 0.03)
    why = ("embeddings are trained: a longer warmup protects them" if ctx.value("modules_to_save")
           else "fresh zero-initialised adapters need only a short warmup")
    return Decision(ratio, f"{math.ceil(steps * ratio)} of {steps} steps ({ratio:.0%}); {why}", [QLORA, UNSLOTH_CPT])
