"""Advisor rules: one function per parameter, ``rule_<name>(ctx) -> Decision``, keyed in RULE_ORDER by the dotted
TrainConfig key its value goes to (advise builds the config from these keys; render_yaml writes each reason above
its key). Adding a parameter: its field in babeltune.config, its rule here, and the rule's test.

Where to find a rule:
  data.py        dedup
  vocabulary.py  vocab_extend (measured by babeltune.vocab)
  adapter.py     r, use_rslora, lora_alpha, lora_dropout, target_modules, bias
  sequence.py    max_seq_length, packing, flash_attention (model.attn_implementation)
  embeddings.py  modules_to_save, embedding_learning_rate
  hardware.py    distributed, load_in_4bit, optimizer, gradient_checkpointing, per_device_train_batch_size,
                 gradient_accumulation_steps   (through the memory model, babeltune.advisor.memory)
  schedule.py    batch_size, num_train_epochs, max_steps, learning_rate, weight_decay,
                 lr_scheduler_type, warmup_ratio
  evaluation.py  evaluation_strategy, eval_steps, save_strategy, save_steps, early_stopping_patience,
                 logging_steps, per_device_eval_batch_size, forgetting

RULE_ORDER runs them so that every rule only reads decisions made before it.
"""

from __future__ import annotations

from typing import Callable

from babeltune.advisor.rules import adapter, data, embeddings, evaluation, hardware, schedule, sequence, vocabulary
from babeltune.advisor.rules.context import RuleContext
from babeltune.advisor.types import Decision, Decisions

Rule = Callable[[RuleContext], Decision]

RULE_ORDER: list[tuple[str, Rule]] = [
    ("data.dedup", data.rule_dedup),
    ("vocab.extend", vocabulary.rule_vocab_extend),
    ("adapter.r", adapter.rule_r),
    ("adapter.use_rslora", adapter.rule_use_rslora),
    ("adapter.lora_alpha", adapter.rule_lora_alpha),
    ("adapter.lora_dropout", adapter.rule_lora_dropout),
    ("adapter.target_modules", adapter.rule_target_modules),
    ("adapter.bias", adapter.rule_bias),
    ("model.max_seq_length", sequence.rule_max_seq_length),
    ("data.packing", sequence.rule_packing),
    ("model.attn_implementation", sequence.rule_flash_attention),
    ("adapter.modules_to_save", embeddings.rule_modules_to_save),
    ("training.distributed", hardware.rule_distributed),
    ("model.load_in_4bit", hardware.rule_load_in_4bit),
    ("training.optimizer", hardware.rule_optimizer),
    ("batch_size", schedule.rule_batch_size),
    ("training.gradient_checkpointing", hardware.rule_gradient_checkpointing),
    ("training.per_device_train_batch_size", hardware.rule_per_device_train_batch_size),
    ("training.gradient_accumulation_steps", hardware.rule_gradient_accumulation_steps),
    ("training.num_train_epochs", schedule.rule_num_train_epochs),
    ("training.max_steps", schedule.rule_max_steps),
    ("training.learning_rate", schedule.rule_learning_rate),
    ("adapter.embedding_learning_rate", embeddings.rule_embedding_learning_rate),
    ("training.weight_decay", schedule.rule_weight_decay),
    ("training.lr_scheduler_type", schedule.rule_lr_scheduler_type),
    ("training.warmup_ratio", schedule.rule_warmup_ratio),
    ("eval.evaluation_strategy", evaluation.rule_evaluation_strategy),
    ("eval.eval_steps", evaluation.rule_eval_steps),
    ("eval.save_strategy", evaluation.rule_save_strategy),
    ("training.save_steps", evaluation.rule_save_steps),
    ("eval.early_stopping_patience", evaluation.rule_early_stopping_patience),
    ("training.logging_steps", evaluation.rule_logging_steps),
    ("eval.per_device_eval_batch_size", evaluation.rule_per_device_eval_batch_size),
    ("eval.forgetting", evaluation.rule_forgetting),
]

RULES: dict[str, Rule] = dict(RULE_ORDER)

# Decisions that set no config key: later rules read them and the config header shows them
# (batch_size = per_device_train_batch_size x gradient_accumulation_steps). Every other key is a TrainConfig key.
SHOWN_ONLY = frozenset({"batch_size"})


def apply_rules(ctx: RuleContext) -> Decisions:
    """Run every rule in order; returns (and fills) ``ctx.decisions``, keyed by the config key each sets."""
    for key, rule in RULE_ORDER:
        ctx.decisions[key] = rule(ctx)
    return ctx.decisions


__all__ = ["RULES", "RULE_ORDER", "SHOWN_ONLY", "RuleContext", "apply_rules"]
