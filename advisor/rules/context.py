"""What every rule sees (RuleContext), the evidence it cites, and small shared helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from babeltune.advisor.memory import MemoryEstimate, budget_gib, estimate_memory
from babeltune.advisor.types import Decisions, Measurements
from babeltune.models.types import ModelFacts

# Citations, spelled once so every rule cites them the same way.
HU_LORA = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models"
QLORA = "QLoRA (Dettmers et al. 2023)"
RSLORA = "rsLoRA (Kalajdzievski 2023)"
BIDERMAN = "Biderman et al. 2024, LoRA Learns Less and Forgets Less"
UNSLOTH_CPT = "Unsloth continued-pretraining recipe (2024)"
PETROV = "Petrov et al. 2023, Language Model Tokenizers Introduce Unfairness Between Languages"
JOSHI = "Joshi et al. 2020, The State and Fate of Linguistic Diversity"
HOFFMANN = "Hoffmann et al. 2022 (Chinchilla)"
MUENNIGHOFF = "Muennighoff et al. 2023, Scaling Data-Constrained Language Models"
KORTHIKANTI = "Korthikanti et al. 2022, Reducing Activation Recomputation"
CHEN_CKPT = "Chen et al. 2016, Training Deep Nets with Sublinear Memory Cost"
FLASH = "Dao 2023, FlashAttention-2"
LOSHCHILOV = "Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization"
HF_TRAINER = "Hugging Face Trainer documentation"
FSDP = "Zhao et al. 2023, PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel"
ZERO = "Rajbhandari et al. 2020, ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"

LEE_DEDUP = "Lee et al. 2022, Deduplicating Training Data Makes Language Models Better"
COMMON_GUIDES = "common LoRA guides (e.g. Unsloth's and Hugging Face PEFT's fine-tuning guides)"
MCCANDLISH = "McCandlish et al. 2018, An Empirical Model of Large-Batch Training"
KAPLAN = "Kaplan et al. 2020, Scaling Laws for Neural Language Models"
PADDING_FREE = "Krell et al. 2021, Efficient Sequence Packing without Cross-contamination"
THROUGHPUT_TABLE = "babeltune throughput measurements (advisor/data/throughput.json)"

MIN_SEQ_LEN = 64
# Corpus size buckets are in characters of unique text (English-equivalent, see RuleContext.text_size), never
# in tokens: a tokenizer that cuts the same text into more pieces does not make it more information. English
# runs ~4.6 characters per token under common tokenizers (0.211-0.218 tokens/char on UD English for cl100k,
# Qwen, SmolLM2 and Gemma-3), so these are the former 100M / 10M token buckets x 5, rounded.
LARGE_CORPUS_CHARS = 500_000_000
SMALL_CORPUS_CHARS = 50_000_000

Goal = Literal["cpt", "sft"]


@dataclass
class RuleContext:
    """Inputs of every rule. ``decisions`` fills up as rules run in order (later rules read earlier ones), keyed by
    the config key each sets; a rule reads one by the key's last part, e.g. ``ctx.value("learning_rate")``."""

    measurements: Measurements
    facts: ModelFacts
    profile: Any = None                  # LangProfile (or any object with the same attributes), or None
    gpu_memory_gib: float = 24.0
    goal: Goal = "cpt"
    precision: str = "bf16"
    kernels: str = "plain"               # the kernels of the backend that will train (memory.KERNEL_SETS)
    decisions: Decisions = field(default_factory=Decisions)
    gpus: int = 1                        # GPUs of one machine the run will use (advise --gpus N)
    gpu: Optional[str] = None            # throughput-table GPU key, "cpu", or None (an unnamed GPU of gpu_memory_gib)
    max_steps: Optional[int] = None      # advise --max-steps: the run length the user asked for
    time_budget_s: Optional[float] = None            # advise --minutes (CPU target), less the measured start-up
    cpu_tokens_per_s: Optional[float] = None         # measured on this machine (babeltune.advisor.probe)
    notes: list[str] = field(default_factory=list)   # rule findings for the advice's notes (e.g. corpus too small)

    def __post_init__(self):
        if not isinstance(self.decisions, Decisions):
            self.decisions = Decisions(self.decisions)

    def value(self, name: str) -> Any:
        """Value of an earlier decision (KeyError names the rule order problem)."""
        if name not in self.decisions:
            raise KeyError(f"rule needs {name!r}, which has not been decided yet (check RULE_ORDER)")
        return self.decisions[name].value

    @property
    def tokens(self) -> int:
        return self.measurements.tokens

    @property
    def unique_characters(self) -> int:
        """Characters left once repeats are removed: near duplicates too when dedup is near. Size rules use
        this even where dedup is off: a repeated text adds no information."""
        m, found = self.measurements, self.measurements.duplicates
        if not found:
            return m.characters
        key = "near_unique_characters" if self.decided("dedup", "exact") == "near" else "unique_characters"
        return int(found.get(key, m.characters))

    @property
    def unique_share(self) -> float:
        return self.unique_characters / self.measurements.characters if self.measurements.characters else 1.0

    @property
    def unique_tokens(self) -> int:
        """Tokens of the unique text (the corpus's tokens/char applied to it)."""
        return round(self.tokens * self.unique_share)

    @property
    def train_tokens(self) -> int:
        """Tokens per epoch after the advised dedup (the tokens/char of the corpus applied to what is left)."""
        removes = self.decided("dedup", "off") != "off"
        return round(self.tokens * self.unique_share) if removes else self.tokens

    @property
    def train_documents(self) -> int:
        m, found = self.measurements, self.measurements.duplicates
        mode = self.decided("dedup", "off")
        if mode == "off" or not found:
            return m.documents
        return max(1, m.documents - int(found.get(f"{mode}_duplicate_documents", 0)))

    @property
    def text_size(self) -> float:
        """Unique characters in English-equivalent characters: divided by how many characters the language's
        parallel reference text takes per English character (Chinese 0.32, Korean 0.49, most alphabets
        0.85-1.15), where the profile has one; else the characters themselves. Tokenizer-free."""
        ratio = self.measurements.reference_chars_vs_english
        return self.unique_characters / ratio if ratio else float(self.unique_characters)

    def size_note(self) -> str:
        """The corpus size every size rule cites, spelled the same way in each reason."""
        m, unique = self.measurements, self.unique_characters
        note = f"{fmt_tokens(unique)} characters of unique text"
        if unique < m.characters:
            note += f" (of {fmt_tokens(m.characters)})"
        ratio = m.reference_chars_vs_english
        if ratio and abs(ratio - 1) >= 0.05:
            note += (f" = {fmt_tokens(self.text_size)} English-equivalent ({self.language_name} takes "
                     f"{ratio:.2f}x English's characters on parallel text)")
        return note

    @property
    def budget_gib(self) -> float:
        return budget_gib(self.gpu_memory_gib)

    @property
    def language_name(self) -> str:
        return getattr(self.profile, "name", None) or "the language"

    def decided(self, name: str, default: Any) -> Any:
        """Value of a decision if it was made already, else ``default`` (for memory questions asked early)."""
        return self.decisions[name].value if name in self.decisions else default

    def estimate(self, **overrides) -> MemoryEstimate:
        """Memory estimate for the decisions so far, with ``overrides`` for what is still being chosen.
        Undecided settings default to the smallest choice (batch 1, 64 tokens, checkpointing on)."""
        settings = dict(
            batch_size=self.decided("per_device_train_batch_size", 1),
            seq_len=self.decided("max_seq_length", MIN_SEQ_LEN),
            lora_r=self.value("r"),
            target_modules=self.value("target_modules"),
            load_in_4bit=self.decided("load_in_4bit", False),
            gradient_checkpointing=self.decided("gradient_checkpointing", True),
            modules_to_save=self.decided("modules_to_save", []),
            optimizer=self.decided("optimizer", "adamw_torch"),
            lora_dropout=self.decided("lora_dropout", 0.0),
            shards=self.gpus if self.decided("distributed", "ddp") == "fsdp" else 1,
        )
        settings.update(overrides)
        return estimate_memory(self.facts, precision=self.precision, kernels=self.kernels, **settings)

    def fits(self, **overrides) -> bool:
        return self.estimate(**overrides).total_gib <= self.budget_gib


def fmt_tokens(n: float) -> str:
    """12345678 -> '12.3M', 45600 -> '45.6k' (for reasons that must stay one line)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def floor_power_of_two(value: float) -> int:
    """Largest power of two <= value (at least 1)."""
    return 1 if value < 2 else 2 ** int(math.floor(math.log2(value)))


def tokens_per_char_note(m: Measurements) -> str:
    low, high = m.tokens_per_char_ci95
    if m.tokens_exact or low == high:
        return f"{m.tokens_per_char:.3f} tokens/char"
    return f"{m.tokens_per_char:.3f} tokens/char (95% CI {low:.3f}-{high:.3f})"
