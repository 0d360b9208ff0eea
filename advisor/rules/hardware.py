"""Rules that fit the run into GPU memory: distributed (DDP or FSDP over --gpus N), load_in_4bit, optimizer,
gradient_checkpointing, per_device_train_batch_size, gradient_accumulation_steps.

Each asks the memory model (babeltune.advisor.memory) one question and keeps the estimate under
90% of --gpu-memory. Preference order: full-precision weights over 4-bit (QLoRA costs speed and a
little quality), a full copy per GPU (DDP) over sharding (FSDP gathers every layer's weights in each step) unless
only sharding fits, no checkpointing when the micro-batch is big enough without it (recomputation
costs ~1/3 more compute), the largest micro-batch that fits.
"""

from __future__ import annotations

import math

from babeltune.advisor.rules.context import (CHEN_CKPT, FSDP, KORTHIKANTI, QLORA, ZERO, RuleContext,
                                             floor_power_of_two)
from babeltune.advisor.types import Decision

MICRO_BATCH_TOKENS = 8192   # below this many tokens per micro-step a GPU is poorly utilised


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


def wanted_micro_batch(ctx: RuleContext) -> int:
    """Sequences per micro-step that keep the GPU busy (capped by the optimizer step's batch)."""
    length, batch = ctx.value("max_seq_length"), ctx.value("batch_size")
    return min(batch, floor_power_of_two(max(1, MICRO_BATCH_TOKENS // length)))


def rule_gradient_checkpointing(ctx: RuleContext) -> Decision:
    micro = wanted_micro_batch(ctx)
    plain = ctx.estimate(batch_size=micro, gradient_checkpointing=False)
    if plain.total_gib <= ctx.budget_gib:
        return Decision(False, (f"without it {micro} x {ctx.value('max_seq_length')} tokens per micro-step need "
                                f"{plain.total_gib:.1f} GiB <= {ctx.budget_gib:.1f} GiB; recomputation would cost "
                                "~33% more compute for nothing"), [CHEN_CKPT, KORTHIKANTI])
    saved = ctx.estimate(batch_size=micro, gradient_checkpointing=True)
    return Decision(True, (f"activations for {micro} x {ctx.value('max_seq_length')} tokens need "
                           f"{plain.parts['activations']:.1f} GiB without it, {saved.parts['activations']:.1f} GiB "
                           f"with it ({plain.total_gib:.1f} -> {saved.total_gib:.1f} GiB total)"), [CHEN_CKPT, KORTHIKANTI])


def rule_per_device_train_batch_size(ctx: RuleContext) -> Decision:
    batch, size = ctx.value("batch_size"), 1
    while size * 2 <= batch and ctx.fits(batch_size=size * 2):
        size *= 2
    estimate = ctx.estimate(batch_size=size)
    limit = "the whole optimizer step" if size == batch else f"{size * 2} would need {ctx.estimate(batch_size=size * 2).total_gib:.1f} GiB"
    return Decision(size, (f"largest power of two that fits: {estimate.total_gib:.1f} GiB <= {ctx.budget_gib:.1f} GiB "
                           f"(90% of {ctx.gpu_memory_gib:g} GB); {limit}"), [KORTHIKANTI])


def rule_gradient_accumulation_steps(ctx: RuleContext) -> Decision:
    batch, micro = ctx.value("batch_size"), ctx.value("per_device_train_batch_size")
    steps = max(1, math.ceil(batch / micro))
    return Decision(steps, (f"batch_size {batch} / per-device {micro} = {steps} micro-step{'s' if steps > 1 else ''} per optimizer step "
                            f"({batch * ctx.value('max_seq_length'):,} tokens)"), [QLORA])
