"""Rules that fit the run into GPU memory: distributed (DDP or FSDP over --gpus N), load_in_4bit, optimizer,
gradient_checkpointing, per_device_train_batch_size, gradient_accumulation_steps.

Each asks the memory model (babeltune.advisor.memory) and keeps the estimate under 90% of --gpu-memory.
Full-precision weights over 4-bit (QLoRA costs speed and a little quality); a full copy per GPU (DDP) over
sharding (FSDP gathers every layer's weights in each step) unless only sharding fits. The micro-batch and gradient
checkpointing are decided together (``micro_plan``): the fastest pair that fits, speed being the GPU
efficiency of the tokens per micro-step (measured throughput table) x 0.75 with checkpointing
(recomputation costs ~1/3 more compute); the reason names what bound the micro-batch: the corpus-derived
batch, memory, or GPU efficiency (the measured curve is flat beyond it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from babeltune.advisor.rules.context import (
    CHEN_CKPT, FSDP, KORTHIKANTI, QLORA, THROUGHPUT_TABLE, ZERO, RuleContext, floor_power_of_two,
)
from babeltune.advisor.rules.shapes import CPU, gpu_curve
from babeltune.advisor.types import Decision

CHECKPOINTING_SPEED = 0.75   # recomputing activations costs ~1/3 more compute: 1/1.33 of the tokens/s
SATURATED_SHARE = 0.95       # beyond the micro-step that reaches this share of the measured peak, more gains nothing


def rule_distributed(ctx: RuleContext) -> Decision:
    """With several GPUs: data parallel (DDP, a full bf16 copy per GPU) when the model fits one GPU, else FSDP (the
    weights sharded over the GPUs) when that fits; else DDP with 4-bit weights (FSDP cannot shard them here)."""
    if ctx.gpus <= 1:
        return Decision("ddp", f"--gpus {ctx.gpus}: one GPU holds the whole model, nothing to shard", [FSDP])
    smallest = dict(batch_size=1, gradient_checkpointing=True, load_in_4bit=False, optimizer="adamw_torch")
    copy = ctx.estimate(**smallest, shards=1)
    if copy.total_gib <= ctx.budget_gib:
        return Decision("ddp", (f"bf16 fits one GPU: {copy.total_gib:.1f} GiB at batch 1 <= {ctx.budget_gib:.1f} GiB, so "
                                f"each of the {ctx.gpus} GPUs keeps a full copy (DDP) and no weights are gathered "
                                "during the step"), [FSDP, ZERO])
    sharded = ctx.estimate(**smallest, shards=ctx.gpus)
    if sharded.total_gib <= ctx.budget_gib:
        return Decision("fsdp", (f"bf16 needs {copy.total_gib:.1f} GiB > {ctx.budget_gib:.1f} GiB on one GPU; sharded "
                                 f"over {ctx.gpus} GPUs (FSDP) weights {copy.parts['weights']:.1f} -> "
                                 f"{sharded.parts['weights']:.1f} GiB + {sharded.parts['gathered']:.1f} GiB gathered per "
                                 f"step: {sharded.total_gib:.1f} GiB per GPU"), [FSDP, ZERO])
    return Decision("ddp", (f"bf16 needs {sharded.total_gib:.1f} GiB per GPU even sharded over {ctx.gpus} GPUs "
                            f"(> {ctx.budget_gib:.1f} GiB): 4-bit weights on every GPU instead (DDP; FSDP cannot shard "
                            "bitsandbytes 4-bit weights here)"), [FSDP, QLORA])


def rule_load_in_4bit(ctx: RuleContext) -> Decision:
    bf16 = ctx.estimate(batch_size=1, gradient_checkpointing=True, load_in_4bit=False, optimizer="adamw_torch")
    if bf16.total_gib <= ctx.budget_gib:
        sharded = f" sharded over {ctx.gpus} GPUs" if ctx.decided("distributed", "ddp") == "fsdp" else ""
        return Decision(False, (f"bf16 weights fit{sharded}: {bf16.total_gib:.1f} GiB at batch 1 <= {ctx.budget_gib:.1f} GiB "
                                f"(90% of {ctx.gpu_memory_gib:g} GB); 4-bit would only cost speed and quality"), [QLORA])
    nf4 = ctx.estimate(batch_size=1, gradient_checkpointing=True, load_in_4bit=True, optimizer="paged_adamw_8bit")
    return Decision(True, (f"bf16 needs {bf16.total_gib:.1f} GiB > {ctx.budget_gib:.1f} GiB budget; NF4 weights "
                           f"({bf16.parts['weights']:.1f} -> {nf4.parts['weights']:.1f} GiB) bring it to "
                           f"{nf4.total_gib:.1f} GiB"), [QLORA])


def rule_optimizer(ctx: RuleContext) -> Decision:
    if ctx.value("load_in_4bit"):
        return Decision("paged_adamw_8bit", "4-bit base: paged 8-bit AdamW absorbs memory spikes on long "
                                            "sequences as in QLoRA", [QLORA])
    full = ctx.estimate(batch_size=1, gradient_checkpointing=True, optimizer="adamw_torch")
    if full.total_gib > ctx.budget_gib:
        return Decision("adamw_8bit", (f"fp32 AdamW states push the estimate to {full.total_gib:.1f} GiB > "
                                       f"{ctx.budget_gib:.1f} GiB; 8-bit states use a quarter"), [QLORA])
    trainable = full.inputs["trainable_parameters"]
    return Decision("adamw_torch", (f"{trainable / 1e6:.1f}M trainable parameters: fp32 AdamW states take "
                                    f"{full.parts['trainable']:.2f} GiB and fit; works without bitsandbytes"), [QLORA])


@dataclass
class MicroPlan:
    """The micro-batch and gradient checkpointing, decided together (the first rule that needs it decides both)."""

    size: int
    checkpointing: bool
    binding: str                 # "corpus" | "memory" | "gpu efficiency"
    speed: float                 # relative tokens/s: GPU efficiency x checkpointing cost


def micro_options(ctx: RuleContext, limit: int) -> list[tuple[int, bool]]:
    """(micro-batch, checkpointing) for every power of two up to ``limit`` that fits, without checkpointing
    where it fits so."""
    options, size = [], 1
    while size <= limit:
        for checkpointing in (False, True):
            if ctx.fits(batch_size=size, gradient_checkpointing=checkpointing):
                options.append((size, checkpointing))
                break
        size *= 2
    return options or [(1, True)]   # load_in_4bit already made batch 1 with checkpointing fit


def micro_plan(ctx: RuleContext) -> MicroPlan:
    """The fastest (micro-batch, checkpointing) that fits: GPU efficiency of the tokens per micro-step from the
    measured throughput table, x 0.75 with checkpointing. On a GPU the micro-batch stops where the measured
    curve saturates; on CPU (flat) the largest that fits wins."""
    batch, length = ctx.value("batch_size"), ctx.value("max_seq_length")
    curve = gpu_curve(ctx)
    limit = batch
    if ctx.gpu != CPU:
        saturated = curve.smallest_tokens_reaching(SATURATED_SHARE, minimum=length)
        limit = min(batch, max(1, floor_power_of_two(saturated / length)))

    def speed(option: tuple[int, bool]) -> float:
        return curve.efficiency(option[0] * length) * (CHECKPOINTING_SPEED if option[1] else 1.0)

    options = micro_options(ctx, limit)
    size, checkpointing = max(options, key=lambda o: (speed(o), not o[1], o[0]))
    if size == batch:
        binding = "corpus"
    elif size == limit and limit < batch:
        binding = "gpu efficiency"
    else:
        binding = "memory"
    return MicroPlan(size, checkpointing, binding, speed((size, checkpointing)))


def rule_gradient_checkpointing(ctx: RuleContext) -> Decision:
    plan, length = micro_plan(ctx), ctx.value("max_seq_length")
    shape = f"{plan.size} x {length} tokens per micro-step (the micro-batch below)"
    plain = ctx.estimate(batch_size=plan.size, gradient_checkpointing=False)
    if not plan.checkpointing:
        return Decision(False, (f"without it {shape} need {plain.total_gib:.1f} GiB <= {ctx.budget_gib:.1f} GiB; "
                                "recomputation would cost ~33% more compute for nothing"), [CHEN_CKPT, KORTHIKANTI])
    saved = ctx.estimate(batch_size=plan.size, gradient_checkpointing=True)
    why = (f"{plain.total_gib:.1f} GiB without it > {ctx.budget_gib:.1f} GiB budget" if plain.total_gib > ctx.budget_gib
           else "")
    smaller = [o for o in micro_options(ctx, plan.size) if not o[1]]
    if not why and smaller:
        why = (f"a micro-batch of {smaller[-1][0]} would fit without it, but {plan.size} with it runs faster "
               f"(GPU efficiency x 0.75 for recomputation: {plan.speed:.2f} vs "
               f"{gpu_curve(ctx).efficiency(smaller[-1][0] * length):.2f})")
    return Decision(True, (f"{shape}: activations {plain.parts['activations']:.1f} GiB without it, "
                           f"{saved.parts['activations']:.1f} GiB with it ({saved.total_gib:.1f} GiB total); {why}"),
                    [CHEN_CKPT, KORTHIKANTI])


def rule_per_device_train_batch_size(ctx: RuleContext) -> Decision:
    plan, batch, length = micro_plan(ctx), ctx.value("batch_size"), ctx.value("max_seq_length")
    estimate = ctx.estimate(batch_size=plan.size, gradient_checkpointing=plan.checkpointing)
    fits = f"{plan.size} x {length} needs {estimate.total_gib:.1f} GiB <= {ctx.budget_gib:.1f} GiB"
    if plan.binding == "corpus":
        why = f"the whole optimizer step (batch_size {batch}, from the corpus) in one micro-step: {fits}"
        return Decision(plan.size, why, [KORTHIKANTI])
    if plan.binding == "gpu efficiency":
        tokens = plan.size * length
        curve = gpu_curve(ctx)
        return Decision(plan.size, (f"GPU efficiency: {tokens:,} tokens per micro-step already reach "
                                    f"{curve.efficiency(tokens):.0%} of the measured peak ({curve.tokens_per_s(tokens):,.0f} "
                                    f"tok/s); a larger micro-batch would only use memory; {fits}"),
                        [KORTHIKANTI, THROUGHPUT_TABLE])
    bigger = ctx.estimate(batch_size=plan.size * 2, gradient_checkpointing=plan.checkpointing)
    return Decision(plan.size, (f"memory: {fits}; {plan.size * 2} would need {bigger.total_gib:.1f} GiB"
                                + ("" if plan.checkpointing else " without checkpointing")), [KORTHIKANTI])


def rule_gradient_accumulation_steps(ctx: RuleContext) -> Decision:
    batch, micro = ctx.value("batch_size"), ctx.value("per_device_train_batch_size")
    steps = max(1, math.ceil(batch / micro))
    return Decision(steps, (f"batch_size {batch} / per-device {micro} = {steps} micro-step{'s' if steps > 1 else ''} per optimizer step "
                            f"({batch * ctx.value('max_seq_length'):,} tokens)"), [QLORA])
