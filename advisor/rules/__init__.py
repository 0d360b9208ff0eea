"""Advisor rules: one function per parameter, ``rule_<name>(ctx) -> Decision``.

Where to find a rule:
  data.py        dedup
  vocabulary.py  vocab_extend (measured by babeltune.vocab)
  adapter.py     r, use_rslora, lora_alpha, lora_dropout, target_modules, bias
  sequence.py    max_seq_length, packing, flash_attention
  embeddings.py  modules_to_save, embedding_learning_rate
  hardware.py    distributed, load_in_4bit, optimizer, gradient_checkpointing, per_device_train_batch_size,
                 gradient_accumulation_steps   (through the memory model, babeltune.advisor.memory)
  schedule.py    batch_size, num_train_epochs, max_steps, learning_rate, weight_decay,
                 lr_scheduler_type, warmup_ratio
  evaluation.py  evaluation_strategy, eval_steps, save_strategy, save_steps, early_stopping_patience,
                 logging_steps

RULE_ORDER runs them so that every rule only reads decisions made before it.
"""

from __future__ import annotations

from typing import Callable

from babeltune.advisor.rules import adapter, data, embeddings, evaluation, hardware, schedule, sequence, vocabulary
from babeltune.advisor.rules.context import RuleContext
from babeltune.advisor.types import Decision

Rule = Callable[[RuleContext], Decision]

RULE_ORDER: list[tuple[str, Rule]] = [
    ("dedup", data.rule_dedup),
    ("vocab_extend", vocabulary.rule_vocab_extend),
    ("r", adapter.rule_r),
    ("use_rslora", adapter.rule_use_rslora),
    ("lora_alpha", adapter.rule_lora_alpha),
    ("lora_dropout", adapter.rule_lora_dropout),
    ("target_modules", adapter.rule_target_modules),
    ("bias", adapter.rule_bias),
    ("max_seq_length", sequence.rule_max_seq_length),
    ("packing", sequence.rule_packing),
    ("flash_attention", sequence.rule_flash_attention),
    ("modules_to_save", embeddings.rule_modules_to_save),
    ("distributed", hardware.rule_distributed),
    ("load_in_4bit", hardware.rule_load_in_4bit),
    ("optimizer", hardware.rule_optimizer),
    ("batch_size", schedule.rule_batch_size),
    ("gradient_checkpointing", hardware.rule_gradient_checkpointing),
    ("per_device_train_batch_size", hardware.rule_per_device_train_batch_size),
    ("gradient_accumulation_steps", hardware.rule_gradient_accumulation_steps),
    ("num_train_epochs", schedule.rule_num_train_epochs),
    ("max_steps", schedule.rule_max_steps),
    ("learning_rate", schedule.rule_learning_rate),
    ("embedding_learning_rate", embeddings.rule_embedding_learning_rate),
    ("weight_decay", schedule.rule_weight_decay),
    ("lr_scheduler_type", schedule.rule_lr_scheduler_type),
    ("warmup_ratio", schedule.rule_warmup_ratio),
    ("evaluation_strategy", evaluation.rule_evaluation_strategy),
    ("eval_steps", evaluation.rule_eval_steps),
    ("save_strategy", evaluation.rule_save_strategy),
    ("save_steps", evaluation.rule_save_steps),
    ("early_stopping_patience", evaluation.rule_early_stopping_patience),
    ("logging_steps", evaluation.rule_logging_steps),
]

RULES: dict[str, Rule] = dict(RULE_ORDER)


def apply_rules(ctx: RuleContext) -> dict[str, Decision]:
    """Run every rule in order; returns (and fills) ``ctx.decisions``."""
    for name, rule in RULE_ORDER:
        ctx.decisions[name] = rule(ctx)
    return ctx.decisions


__all__ = ["RULES", "RULE_ORDER", "RuleContext", "apply_rules"]
