"""Optimisation rules: batch_size (effective), num_train_epochs, max_steps, learning_rate,
weight_decay, lr_scheduler_type, warmup_ratio.

Epochs follow the information in the corpus (characters of unique text, English-equivalent), like rank and
dropout; steps follow the rows the trainer will build (after dedup) and the tokens per optimizer step, chosen
for GPU efficiency; the learning rate follows the goal (cpt/sft), the rsLoRA scale, the model size and, for cpt,
the planned number of optimizer steps.

Why a short cpt run gets a larger learning rate: the recipe's 5e-5 (Unsloth CPT) assumes a run long enough for the
adapter to move; cosine decay to 0 halves the mean lr, so the adapter's whole travel is ~ lr/2 x steps. On the
small UD corpora of issue 18 the batch rule plans 63-99 steps (the corpus binds, not the 200-step target) and the
advised 5e-5 lost to Unsloth's notebook defaults (lr 2e-4) by 0.4-2.7% held-out bits/char; the same configs at 3x
the lr (same r, same steps) were 2.7-9.9% better than at 5e-5 in 6 of 6 cells (SmolLM2-135M on hi/ja/fi/ko,
Gemma-3-270m on hi/ko; H100, hf-peft, bench/results/advice_quality.json), English bits/char no higher than the
base model's; the advised x3 on UD mr (CPU, fp32: bench/results/advice_quality_raw/cpu_mr_advised.json) was 15.7%
better than 5e-5 but raised English +2.3% (x2: +1.5%, 8% worse on Marathi), while UD ja cut to the same size fell
-0.9% at x3: corpus size does not explain it, so the rule stays and every run reports English (eval.forgetting). On the one larger corpus (MahaSent, 252 steps) 5e-5 already beat the defaults by 16.5%; x3 is
untested there, so runs of >= SHORT_RUN_STEPS keep the recipe value. sft and classify are not measured yet and
keep their values at any length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from babeltune.advisor.rules.context import (
    BIDERMAN, COMMON_GUIDES, KAPLAN, LARGE_CORPUS_CHARS, LOSHCHILOV, MCCANDLISH, MUENNIGHOFF, QLORA, RSLORA,
    SMALL_CORPUS_CHARS, THROUGHPUT_TABLE, UNSLOTH_CPT, RuleContext, floor_power_of_two, fmt_tokens,
)
from babeltune.advisor.rules.shapes import (
    CPU, EOS_PER_DOCUMENT, MIN_STEPS, RowPlan, device_label, eval_fraction, gpu_curve, planned_rows, steps_for,
)
from babeltune.advisor.types import Decision

TARGET_STEPS = 200          # preferred optimizer steps when the corpus fills them at a GPU-efficient shape
EFFICIENT_SHARE = 0.5       # a step shape is GPU-efficient at >= this share of the measured peak tokens/s
CPU_TOKENS_PER_STEP = 512   # CPU: tokens/s is flat in the batch size, so small steps (more updates per second)
MAX_TOKENS_PER_STEP = {"cpt": 65_536, "sft": 32_768}
# Learning rate x lora_alpha under rsLoRA (the rank-free update size):
#   cpt: Unsloth CPT recipe, lr 5e-5 at alpha 32 with rsLoRA;
#   sft: Unsloth/QLoRA-style 2e-4 at r=16, alpha=16 without rsLoRA = rsLoRA alpha 4 -> 8e-4.
LR_TIMES_ALPHA = {"cpt": 5e-5 * 32, "sft": 2e-4 * 4}
LARGE_MODEL_PARAMS = 20e9                # QLoRA halved the learning rate for 33B/65B models
# cpt runs of fewer planned optimizer steps than this are "short" and get SHORT_RUN_LR_FACTOR x the recipe lr
# (measured: 63-99 steps improved at x3; 252 steps already best at x1). Equal to TARGET_STEPS: a run the corpus
# cuts below the batch rule's target is exactly the run with too little budget to move the adapter.
SHORT_RUN_STEPS = TARGET_STEPS
SHORT_RUN_LR_FACTOR = 3
SHORT_RUN_EVIDENCE = ("measured at 63-99 steps (UD hi/ja/fi/ko/mr; SmolLM2-135M, Gemma-3-270m; H100, mr on CPU): x3 gave "
                      "2.7-15.7% lower held-out bits/char than 5e-5 in 7 of 7 runs; English rose above the base model's "
                      "only on UD mr, +2.3% (see eval.forgetting) (bench/results/advice_quality.json)")
ADVICE_QUALITY = "babeltune advice-quality benchmark (bench/results/advice_quality.json, issue 18)"


def planned_epochs(ctx: RuleContext) -> int:
    """Repeat small corpora (up to ~4 epochs is almost as good as fresh data), one pass over large ones; by
    the information in the corpus (ctx.text_size), whatever the tokenizer."""
    if ctx.text_size >= LARGE_CORPUS_CHARS:
        return 1
    return 2 if ctx.text_size >= SMALL_CORPUS_CHARS else 3


def steps_per_epoch(ctx: RuleContext) -> int:
    """Optimizer steps per epoch as the HF Trainer counts them over the rows `train` builds."""
    return steps_for(planned_rows(ctx).rows, ctx.value("batch_size"), 1)


def power_of_two_at_least(value: float) -> int:
    return 1 if value <= 1 else 2 ** math.ceil(math.log2(value))


@dataclass
class BatchChoice:
    size: int                   # rows per optimizer step
    binding: str                # what decided it: "target steps", "gpu efficiency", "corpus", "corpus too small", "cpu"
    efficient: int              # rows per step at the GPU-efficient shape
    plan: RowPlan
    epochs: int

    @property
    def total_rows(self) -> int:
        return self.plan.rows * self.epochs


def choose_batch(ctx: RuleContext) -> BatchChoice:
    """Rows per optimizer step: the GPU-efficient shape, more when the corpus fills TARGET_STEPS steps with it,
    fewer when it would leave fewer than MIN_STEPS steps."""
    plan, epochs = planned_rows(ctx), planned_epochs(ctx)
    per_row, total_rows = plan.tokens_per_row, plan.rows * planned_epochs(ctx)
    cap = floor_power_of_two(MAX_TOKENS_PER_STEP[ctx.goal] / per_row)
    if ctx.gpu == CPU:
        efficient = floor_power_of_two(CPU_TOKENS_PER_STEP / per_row)
    else:
        wanted_tokens = gpu_curve(ctx).smallest_tokens_reaching(EFFICIENT_SHARE, minimum=math.ceil(per_row))
        efficient = power_of_two_at_least(wanted_tokens / per_row)
    by_target = floor_power_of_two(total_rows / TARGET_STEPS)
    if ctx.gpu == CPU:           # steps are what a CPU run buys: never larger than the CPU-sized step
        size, binding = efficient, "cpu"
    elif by_target > efficient:
        size, binding = by_target, "target steps"
    else:
        size, binding = efficient, "gpu efficiency"
    if size > cap:
        size, binding = cap, "cap"
    if total_rows / size < MIN_STEPS:
        size, binding = floor_power_of_two(total_rows / MIN_STEPS), "corpus"
        if total_rows < MIN_STEPS:
            binding = "corpus too small"
    return BatchChoice(size, binding, min(efficient, cap), plan, epochs)


def batch_reason(ctx: RuleContext, c: BatchChoice) -> str:
    length, per_row = ctx.value("max_seq_length"), c.plan.tokens_per_row
    rows = f"{c.plan.rows:,} rows of {length} tokens x {c.epochs} epoch{'s' if c.epochs > 1 else ''}"
    step_tokens = round(c.size * per_row)
    shape = f"{c.size} x {length} = {step_tokens:,} tokens per step"
    steps = steps_for(c.plan.rows, c.size, c.epochs)
    if c.binding in ("target steps", "cap"):
        capped = f" (capped at {MAX_TOKENS_PER_STEP[ctx.goal]:,} tokens)" if c.binding == "cap" else ""
        return f"{rows} / {TARGET_STEPS} target steps -> {shape}{capped}, {steps} optimizer steps"
    if c.binding == "cpu":
        return (f"CPU: {shape} ({CPU_TOKENS_PER_STEP} tokens per step: CPU tokens/s does not grow with the batch, so "
                f"small steps give the most updates per second); {rows} -> {steps} optimizer steps")
    efficient_tokens = round(c.efficient * per_row)
    if ctx.gpu == CPU:
        measured = f"{CPU_TOKENS_PER_STEP} tokens per step on CPU"
    else:
        curve = gpu_curve(ctx)
        measured = (f"{efficient_tokens:,} tokens per micro-step reach {curve.tokens_per_s(efficient_tokens):,.0f} "
                    f"tok/s on {device_label(ctx)} vs {curve.tokens_per_s(per_row):,.0f} at one row per step (peak "
                    f"{curve.peak:,.0f})")
    if c.binding == "gpu efficiency":
        return (f"GPU efficiency: {measured}; {rows} -> {shape}, {steps} optimizer steps instead of {TARGET_STEPS}: "
                "below the critical batch size (10^5-10^6 tokens for language models) fewer, larger steps over the same "
                "tokens reach about the same loss")
    if c.binding == "corpus":
        few = steps_for(c.plan.rows, c.efficient, c.epochs)
        efficient = "CPU-sized" if ctx.gpu == CPU else "GPU-efficient"
        return (f"corpus: {rows} give only {few} steps at the {efficient} {c.efficient} x {length} ({measured}); "
                f"{shape} keeps {steps} optimizer steps (at least {MIN_STEPS}) for warmup, decay and evaluations")
    return (f"corpus too small: {rows} = {c.total_rows} rows, fewer than {MIN_STEPS} optimizer steps even at "
            f"{shape}")


def too_small_note(ctx: RuleContext, c: BatchChoice) -> str:
    m = ctx.measurements
    need_tokens = MIN_STEPS * c.plan.tokens_per_row / c.epochs / (1 - eval_fraction())
    need_chars = need_tokens / m.tokens_per_char if m.tokens_per_char else need_tokens
    return (f"corpus too small to be worth a run: {m.tokens:,} tokens give {c.total_rows} training rows of "
            f"{ctx.value('max_seq_length')} tokens over {c.epochs} epochs, fewer than {MIN_STEPS} optimizer steps even "
            f"at one row per step; collect at least ~{need_tokens:,.0f} tokens (~{need_chars:,.0f} characters at "
            f"{m.tokens_per_char:.3f} tokens/char)")


def rule_batch_size(ctx: RuleContext) -> Decision:
    choice = choose_batch(ctx)
    if choice.binding == "corpus too small":
        ctx.notes.append(too_small_note(ctx, choice))
    evidence = [UNSLOTH_CPT, MCCANDLISH, KAPLAN] + ([] if ctx.gpu == CPU else [THROUGHPUT_TABLE])
    return Decision(choice.size, batch_reason(ctx, choice), evidence)


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


def epoch_plan_steps(ctx: RuleContext) -> int:
    return steps_for(planned_rows(ctx).rows, ctx.value("batch_size"), ctx.value("num_train_epochs"))


def budget_steps(ctx: RuleContext, planned: int) -> Optional[int]:
    """Steps that fit advise --minutes on this CPU (training plus the evaluations they bring), if fewer than planned."""
    if not ctx.time_budget_s or not ctx.cpu_tokens_per_s:
        return None
    from babeltune.advisor.estimate import steps_within

    fit = steps_within(ctx.time_budget_s, ctx.cpu_tokens_per_s, step_tokens(ctx), heldout_tokens(ctx))
    return fit if fit < planned else None


def step_tokens(ctx: RuleContext) -> float:
    return ctx.value("batch_size") * planned_rows(ctx).tokens_per_row


def heldout_tokens(ctx: RuleContext) -> float:
    """Tokens of the held-out split that every evaluation scores (5% of the documents, capped)."""
    from babeltune.config import EvalConfig

    m = ctx.measurements
    documents = min(EvalConfig.model_fields["max_eval_documents"].default, max(1, round(m.documents * eval_fraction())))
    return documents * (m.tokens / max(1, m.documents) + EOS_PER_DOCUMENT)


def rule_max_steps(ctx: RuleContext) -> Decision:
    epochs, plan, batch = ctx.value("num_train_epochs"), planned_rows(ctx), ctx.value("batch_size")
    planned = epoch_plan_steps(ctx)
    counted = (f"{epochs:g} epoch{'s' if epochs > 1 else ''} x ceil({plan.rows:,} rows / {batch}) = {planned} optimizer "
               f"steps, counted as train counts them ({plan.documents:,} documents after the {eval_fraction():.0%} "
               f"held-out split, EOS after each, packing {plan.packing})")
    if ctx.max_steps:
        return Decision(ctx.max_steps, f"advise --max-steps {ctx.max_steps} (the epoch plan: {counted})", [MUENNIGHOFF])
    fit = budget_steps(ctx, planned)
    if fit is not None:
        return Decision(fit, (f"advise --minutes: {fit} steps of {step_tokens(ctx):,.0f} tokens at the measured "
                              f"{ctx.cpu_tokens_per_s:,.0f} tok/s on this CPU, with their evaluations, fit the "
                              f"{ctx.time_budget_s:,.0f} s left after the measured start-up (the epoch plan: {counted})"),
                        [MUENNIGHOFF])
    return Decision(planned, (f"{counted}; written instead of num_train_epochs so that train runs exactly the "
                              "steps that the schedule, the evaluations and the time estimate assume"), [MUENNIGHOFF])


def total_steps(ctx: RuleContext) -> int:
    steps = ctx.value("max_steps")
    return steps if steps else epoch_plan_steps(ctx)


def short_run_factor(ctx: RuleContext, steps: int) -> int:
    """cpt runs of fewer than SHORT_RUN_STEPS planned optimizer steps need a larger step size to move the adapter
    within their budget (see the module docstring); sft and classify are not measured and keep factor 1."""
    return SHORT_RUN_LR_FACTOR if ctx.goal == "cpt" and steps < SHORT_RUN_STEPS else 1


def rule_learning_rate(ctx: RuleContext) -> Decision:
    alpha, r, steps = ctx.value("lora_alpha"), ctx.value("r"), total_steps(ctx)
    base = LR_TIMES_ALPHA[ctx.goal] / alpha
    factor = short_run_factor(ctx, steps)
    lr = base * factor
    size_note = ""
    if ctx.facts.parameters >= LARGE_MODEL_PARAMS:
        lr /= 2
        size_note = f"; halved for {ctx.facts.parameters / 1e9:.0f}B parameters"
    recipe = (f"lr x alpha = {LR_TIMES_ALPHA[ctx.goal]:.1e} under rsLoRA -> {LR_TIMES_ALPHA[ctx.goal]:.1e}/{alpha:g} "
              f"= {base:.1e} at any r (here {r})")
    if ctx.goal != "cpt":
        why = (f"{recipe}; sft teaches a response format, a smaller change than cpt (common guides: 2e-4 at r = alpha "
               f"= 16){size_note}")
    elif factor > 1:
        why = (f"short run: {steps} planned optimizer steps < {SHORT_RUN_STEPS}: lr x{factor} = {base * factor:.1e}, not "
               f"the Unsloth CPT recipe's {LR_TIMES_ALPHA['cpt']:.1e}/{alpha:g} = {base:.1e} (lr x alpha under rsLoRA, "
               f"at any r; here {r}): cosine decay to 0 halves the mean lr, so a short run at the recipe's value moves "
               f"the adapter too little; {SHORT_RUN_EVIDENCE}{size_note}")
    else:
        why = (f"{steps} planned optimizer steps (>= {SHORT_RUN_STEPS}, not a short run): {recipe}; cpt on raw text "
               f"moves the model further than sft (Unsloth's CPT recipe: 5e-5 at alpha 32){size_note}")
    evidence = [UNSLOTH_CPT, RSLORA, QLORA, BIDERMAN, COMMON_GUIDES] + ([ADVICE_QUALITY] if factor > 1 else [])
    return Decision(float(f"{lr:.2g}"), (f"{ctx.goal}: {why}; the 2e-5 some guides give for 'low-resource' languages "
                                         "confuses corpus size (handled by r, dropout, epochs) with step size"), evidence)


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
