"""Batch, steps and micro-batch decisions on real text (the shipped Marathi tweets and UD samples: their real
document lengths at SmolLM2-135M's measured tokens per character), with SmolLM2-135M's shape for the memory
model and the throughput table:
GPU-efficient shapes, a step floor for small corpora, the binding constraint named, checkpointing decided
for the micro-batch used, and the steps `advise` plans equal to the steps `train` counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from advisor_fixtures import SMOLLM2, measurements
from babeltune.corpus.reader import CorpusSpec
from babeltune.advisor.memory import BUDGET_SHARE
from babeltune.advisor.rules import RuleContext, apply_rules
from babeltune.advisor.rules.schedule import EFFICIENT_SHARE, MIN_STEPS
from babeltune.advisor.rules.shapes import gpu_curve, steps_for

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT / "examples" / "data" / "marathi" / "train.txt"
TEXT = ROOT / "tests" / "data" / "text"


# SmolLM2-135M's tokens per character on these files (README, docs/models.md): the document lengths are the
# real ones, in SmolLM2's tokens, without loading the built-in model in a fast test.
SMOLLM2_TOKENS_PER_CHAR = {"mr": 1.159, "hi": 1.086, "en": 0.218, "tweets": 1.138}


@pytest.fixture(scope="module")
def measure():
    from babeltune.languages.language import resolve_language

    def run(path: Path, lang: str = "mr", ratio: float | None = None):
        chars = [len(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ratio = ratio or SMOLLM2_TOKENS_PER_CHAR["tweets" if path == TWEETS else lang]
        m = measurements(tokens_per_char=ratio, total_tokens=round(sum(chars) * ratio), chars=chars)
        m.documents = len(chars)
        return m, resolve_language(lang)
    return run


def decide(measured, gpu_memory=24.0, gpu=None, goal="cpt"):
    measurements, profile = measured
    ctx = RuleContext(measurements=measurements, facts=SMOLLM2, profile=profile, gpu_memory_gib=gpu_memory,
                      goal=goal, gpu=gpu)
    return ctx, apply_rules(ctx)


def test_shipped_sample_gets_a_gpu_efficient_step_and_says_so(measure):
    """Issue 12: 3,000 tweets were advised 16 x 128 = 2,048 tokens per step, 16% of the measured H100 peak."""
    ctx, d = decide(measure(TWEETS), gpu="h100")
    length, micro = d["max_seq_length"].value, d["per_device_train_batch_size"].value
    curve = gpu_curve(ctx)
    assert curve.efficiency(micro * length) >= EFFICIENT_SHARE
    reason = d["batch_size"].reason
    assert reason.startswith("GPU efficiency:") and "tok/s" in reason and "H100" in reason
    assert d["max_steps"].value >= MIN_STEPS          # traded steps for batch, not below the floor


@pytest.mark.parametrize("name", ["mr.txt", "hi.txt", "en.txt"])
def test_small_corpora_keep_enough_steps_without_single_row_steps(measure, name):
    """Issue 18: ~20 KB of text got 1 x 128 = 128 tokens per step to reach a fixed 200 steps. Now: rows per
    step from the step floor, and the reason names the corpus as what bound it. After the cpt length rule grew
    rows to 256-512 tokens for context, the same corpora got one row per step again: the length now grows only while the corpus fills the step floor with multi-row steps,
    and its reason says so."""
    lang = name.removesuffix(".txt")
    ctx, d = decide(measure(TEXT / name, lang))
    batch, steps = d["batch_size"].value, d["max_steps"].value
    assert batch >= 2
    assert MIN_STEPS <= steps < 2 * MIN_STEPS + 10
    assert d["batch_size"].reason.startswith("corpus:") and f"optimizer steps (at least {MIN_STEPS})" in d["batch_size"].reason
    assert not ctx.notes                               # small, but worth a run
    length_reason = d["max_seq_length"].reason
    if "grown while" not in length_reason:             # kept short for the corpus: the reason names that constraint
        assert f"not grown to {2 * d['max_seq_length'].value}: the corpus would give only" in length_reason


def test_a_corpus_too_small_to_be_worth_a_run_is_named(measure, tmp_path):
    lines = (TEXT / "mr.txt").read_text(encoding="utf-8").splitlines()[:40]
    corpus = tmp_path / "few.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ctx, d = decide(measure(corpus))
    assert d["batch_size"].value == 1 and d["batch_size"].reason.startswith("corpus too small")
    assert len(ctx.notes) == 1 and ctx.notes[0].startswith("corpus too small to be worth a run")
    assert "collect at least" in ctx.notes[0] and "characters" in ctx.notes[0]


@pytest.mark.parametrize("gpu_memory", [2, 3, 4, 6, 8, 12, 16, 24, 80])
def test_checkpointing_is_decided_for_the_micro_batch_actually_used(measure, gpu_memory):
    """Issue 18: the reason cited 128 x 64 while the chosen micro-batch, 64 x 64, fitted without it."""
    ctx, d = decide(measure(TWEETS), gpu_memory=gpu_memory)
    micro, length = d["per_device_train_batch_size"].value, d["max_seq_length"].value
    checkpointing = d["gradient_checkpointing"].value
    assert d["gradient_checkpointing"].reason.count(f"{micro} x {length}") == 1
    budget = gpu_memory * BUDGET_SHARE
    assert ctx.estimate(batch_size=micro, gradient_checkpointing=checkpointing).total_gib <= budget
    if checkpointing:   # on only when the same micro-batch does not fit without it, or a faster one needs it
        without = ctx.estimate(batch_size=micro, gradient_checkpointing=False).total_gib
        assert without > budget or "runs faster" in d["gradient_checkpointing"].reason


def test_per_device_reason_names_the_binding_constraint(measure):
    """Issue 18: batch 1 was explained as 'largest power of two that fits' when the corpus-derived batch was 1."""
    _, small = decide(measure(TEXT / "mr.txt"))
    assert small["per_device_train_batch_size"].value == small["batch_size"].value
    assert small["per_device_train_batch_size"].reason.startswith("the whole optimizer step")
    assert "largest power of two" not in small["per_device_train_batch_size"].reason
    ctx, tight = decide(measure(TWEETS), gpu_memory=3)
    per_device = tight["per_device_train_batch_size"].value
    assert per_device < tight["batch_size"].value
    assert tight["per_device_train_batch_size"].reason.startswith("memory:")
    assert ctx.estimate(batch_size=per_device * 2).total_gib > 3 * BUDGET_SHARE
    big = measure(TWEETS)[0]
    big = type(big)(**{**big.__dict__, "tokens": big.tokens * 200, "documents": big.documents * 200})
    ctx, roomy = decide((big, measure(TWEETS)[1]), gpu_memory=80, gpu="h100")
    reason = roomy["per_device_train_batch_size"].reason
    assert roomy["per_device_train_batch_size"].value < roomy["batch_size"].value and reason.startswith("GPU efficiency")
    assert ctx.estimate(batch_size=roomy["per_device_train_batch_size"].value * 2).total_gib <= 80 * BUDGET_SHARE


@pytest.mark.parametrize("path, lang", [(TWEETS, "mr"), (TEXT / "hi.txt", "hi"), (TEXT / "en.txt", "en")])
def test_advise_plans_the_steps_that_train_counts(tiny_model_dir, path, lang):
    """Issue 14: advise planned 291 steps and train ran 309. The advised max_steps equals the HF Trainer's
    count (ceil(epochs x ceil(rows / batch))) over the rows train builds from the same config."""
    from transformers import AutoTokenizer

    from babeltune.advisor.advise import advise
    from babeltune.config import validate_config
    from babeltune.trainer.data import prepare_data

    advice = advise(lang, CorpusSpec(path=str(path)), model=str(tiny_model_dir), probe=False)
    config = validate_config(advice.config)
    assert config.training.num_train_epochs is None and config.training.max_steps
    epochs = advice.decisions["num_train_epochs"].value
    data = prepare_data(config, AutoTokenizer.from_pretrained(tiny_model_dir), packed_rows=True)
    batch = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
    trainer_steps = steps_for(len(data.train), batch, epochs)
    assert abs(config.training.max_steps - trainer_steps) <= max(1, math.ceil(0.02 * trainer_steps))
    assert f"{epochs:g} epochs x ceil(" in advice.decisions["max_steps"].reason
