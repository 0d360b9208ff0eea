"""Advisor rules on constructed measurements: each value must follow from what was measured."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor_fixtures import JAPANESE, LLAMA2_7B, MARATHI, SMOLLM2, char_lengths, measurements
from babeltune.advisor.advise import build_config, config_data, given_decisions
from babeltune.corpus.reader import CorpusSpec
from babeltune.advisor.memory import BUDGET_SHARE
from babeltune.advisor.rules import RULE_ORDER, RULES, RuleContext, apply_rules
from babeltune.advisor.rules.hardware import SATURATED_SHARE
from babeltune.advisor.rules.schedule import SHORT_RUN_STEPS
from babeltune.advisor.rules.shapes import gpu_curve
from babeltune.config import validate_config
from babeltune.errors import BabeltuneError

HINDI_TABLE_PARAMETERS = [
    "max_seq_length", "batch_size", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
    "optimizer", "weight_decay", "lora_alpha", "lora_dropout", "r", "target_modules", "bias",
    "gradient_checkpointing", "attn_implementation", "num_train_epochs", "max_steps", "evaluation_strategy",
    "save_strategy", "early_stopping_patience",
]


def decide(m=None, facts=SMOLLM2, profile=MARATHI, gpu=24.0, goal="cpt"):
    ctx = RuleContext(measurements=m or measurements(), facts=facts, profile=profile, gpu_memory_gib=gpu, goal=goal)
    return ctx, apply_rules(ctx)


def test_every_seed_table_parameter_has_a_reason_citing_a_number():
    _, decisions = decide()
    for name in HINDI_TABLE_PARAMETERS:
        assert name in decisions, name
        reason = decisions[name].reason
        assert reason and "\n" not in reason, name
        assert re.search(r"\d", reason), f"{name}: reason cites no number: {reason}"
        assert decisions[name].evidence, name


def order_problems(order, ctx, decisions) -> dict[str, str]:
    """rule name -> how it depends on a decision ``order`` places after it. Each rule runs twice: with only the
    decisions before it (as apply_rules runs it) and with every decision visible. A rule that reads a later one
    fails the first way (KeyError) or, when a ``.get`` fallback hides the missing value, decides differently."""
    def run(rule, visible):
        return rule(RuleContext(measurements=ctx.measurements, facts=ctx.facts, profile=ctx.profile,
                                gpu_memory_gib=ctx.gpu_memory_gib, goal=ctx.goal, decisions=dict(visible))).value

    problems = {}
    for index, (name, rule) in enumerate(order):
        try:
            alone = run(rule, {n: decisions[n] for n, _ in order[:index]})
        except KeyError as missing:
            problems[name] = f"reads {missing}, decided later"
            continue
        seen = run(rule, decisions)
        if alone != seen:
            problems[name] = f"{alone!r} before the later decisions, {seen!r} once they are visible"
    return problems


@pytest.mark.parametrize("goal", ["cpt", "sft"])
def test_rules_only_read_earlier_decisions(goal):
    ctx, decisions = decide(goal=goal)
    assert set(RULES) == set(decisions)
    assert order_problems(RULE_ORDER, ctx, decisions) == {}


def test_a_rule_moved_before_what_it_reads_is_caught():
    ctx, decisions = decide()
    names = [name for name, _ in RULE_ORDER]
    moved = [RULE_ORDER[names.index("adapter.lora_alpha")]] + [item for item in RULE_ORDER if item[0] != "adapter.lora_alpha"]
    assert "adapter.lora_alpha" in order_problems(moved, ctx, decisions)   # alpha follows r (and rsLoRA)


def test_token_dense_tokenizer_gets_longer_sequences_for_the_same_text():
    # long documents: both lengths follow p95, neither grows for context (blocks_note grows short ones)
    chars = char_lengths(median_chars=2000)
    _, light = decide(measurements(tokens_per_char=0.25, chars=chars))
    _, dense = decide(measurements(tokens_per_char=1.16, chars=chars))
    assert dense["max_seq_length"].value > light["max_seq_length"].value
    assert "p95 = " in dense["max_seq_length"].reason


def test_max_seq_length_covers_p95_and_reports_truncation():
    m = measurements(tokens_per_char=1.0)
    _, decisions = decide(m, goal="sft")
    length = decisions["max_seq_length"].value
    assert length % 64 == 0
    assert length >= m.doc_tokens_percentiles["p95"]
    assert m.truncated_share(length) <= 0.05
    assert f"{m.truncated_share(length):.1%}" in decisions["max_seq_length"].reason


def test_cpt_length_reports_what_blocks_packing_cuts():
    # Blocks packing cuts the token stream every max_seq_length tokens wherever documents end: covering p95
    # keeps documents whole only one per row. The reason gives the simulated share; the length grows until
    # at most 10% of tokens train without their document's start -- when the corpus fills the step floor with
    # multi-row steps at that length (2M tokens do); 20k tokens stop the growth, and the reason says why.
    from babeltune.advisor.rules.sequence import MAX_CUT_CONTEXT, block_cuts

    m = measurements(tokens_per_char=1.0, total_tokens=2_000_000)
    _, decisions = decide(m)
    length = decisions["max_seq_length"].value
    assert length >= m.doc_tokens_percentiles["p95"] and length % 64 == 0
    crossed, cut = block_cuts(m.doc_token_lengths, length)
    assert cut <= MAX_CUT_CONTEXT
    assert f"{crossed:.0%} of documents cross a cut and {cut:.0%} of tokens" in decisions["max_seq_length"].reason
    small = measurements(tokens_per_char=1.0)
    _, decisions = decide(small)
    length = decisions["max_seq_length"].value
    assert block_cuts(small.doc_token_lengths, length)[1] > MAX_CUT_CONTEXT
    assert f"not grown to {2 * length}: the corpus would give only" in decisions["max_seq_length"].reason


def test_max_seq_length_capped_by_context_length():
    chars = char_lengths(median_chars=6000)
    _, decisions = decide(measurements(tokens_per_char=1.2, chars=chars, total_tokens=50_000_000), facts=LLAMA2_7B,
                          gpu=80)
    assert decisions["max_seq_length"].value == LLAMA2_7B.context_length
    assert "capped by context length 4096" in decisions["max_seq_length"].reason


def test_tiny_corpus_gets_more_dropout_and_lower_rank_than_large_corpus():
    # sizes are characters of text (20k and 2B tokens at 1.16 tokens/char), not tokens
    _, tiny = decide(measurements(total_tokens=20_000))
    _, large = decide(measurements(total_tokens=2_000_000_000))
    assert tiny["lora_dropout"].value > large["lora_dropout"].value == 0.0
    assert tiny["r"].value < large["r"].value
    assert "17.2k characters of unique text" in tiny["r"].reason and "1.72B characters" in large["r"].reason


@pytest.mark.parametrize("premium, tokens, trained", [
    (5.3, 2_000_000_000, True),     # bad fit, big corpus
    (5.3, 20_000, False),           # bad fit, tiny corpus
    (1.1, 2_000_000_000, False),    # good fit, big corpus
    (1.1, 20_000, False),
])
def test_embeddings_trained_only_with_bad_fit_and_large_corpus(premium, tokens, trained):
    _, decisions = decide(measurements(total_tokens=tokens, premium=premium))
    assert bool(decisions["modules_to_save"].value) is trained
    assert f"{premium:.2f}x" in decisions["modules_to_save"].reason
    if trained:
        assert decisions["embedding_learning_rate"].value == pytest.approx(decisions["learning_rate"].value / 10)
    else:
        assert decisions["embedding_learning_rate"].value is None


def test_bad_fit_without_premium_uses_tokens_per_char_per_script():
    # 0.7 tokens/char is a bad fit for a space-delimited script but normal for Japanese.
    _, spaced = decide(measurements(tokens_per_char=0.7, total_tokens=2_000_000_000), profile=MARATHI)
    _, japanese = decide(measurements(tokens_per_char=0.7, total_tokens=2_000_000_000), profile=JAPANESE)
    assert spaced["modules_to_save"].value == ["embed_tokens", "lm_head"]
    assert japanese["modules_to_save"].value == []


def test_sft_examples_are_packed_padding_free_and_embeddings_stay_frozen():
    _, decisions = decide(measurements(total_tokens=2_000_000_000, premium=5.0), goal="sft")
    assert decisions["packing"].value == "padding_free"   # whole examples per row, never crossing, no padding
    assert decisions["modules_to_save"].value == []
    _, cpt = decide(measurements(total_tokens=2_000_000_000, premium=5.0), goal="cpt")
    assert decisions["learning_rate"].value < cpt["learning_rate"].value


def test_learning_rate_independent_of_rank_under_rslora_and_halved_for_huge_models():
    # both long runs (>= SHORT_RUN_STEPS planned steps): only r differs between them
    _, medium = decide(measurements(total_tokens=5_000_000))
    _, large = decide(measurements(total_tokens=500_000_000))
    assert medium["r"].value != large["r"].value
    assert min(medium["max_steps"].value, large["max_steps"].value) >= SHORT_RUN_STEPS
    assert medium["learning_rate"].value == large["learning_rate"].value
    huge = SMOLLM2.__class__(**{**SMOLLM2.to_dict(), "parameters": 70_000_000_000})
    _, decisions = decide(measurements(total_tokens=500_000_000), facts=huge, gpu=1000)
    assert decisions["max_steps"].value >= SHORT_RUN_STEPS
    assert decisions["learning_rate"].value == pytest.approx(large["learning_rate"].value / 2)
    assert "halved for 70B" in decisions["learning_rate"].reason


def decide_steps(steps: int, goal: str = "cpt", total_tokens: int = 5_000_000):
    ctx = RuleContext(measurements=measurements(total_tokens=total_tokens), facts=SMOLLM2, profile=MARATHI,
                      gpu_memory_gib=24.0, goal=goal, max_steps=steps)
    return apply_rules(ctx)


def test_short_cpt_run_gets_three_times_the_recipe_learning_rate():
    # the same corpus and r; only the planned optimizer steps differ (issue 18: 63-99 steps at 5e-5 lost to lr x3)
    short, long = decide_steps(SHORT_RUN_STEPS - 1), decide_steps(SHORT_RUN_STEPS)
    assert short["r"].value == long["r"].value and short["lora_alpha"].value == long["lora_alpha"].value == 32
    assert long["learning_rate"].value == pytest.approx(5e-5)                  # Unsloth CPT recipe, unchanged
    assert short["learning_rate"].value == pytest.approx(3 * 5e-5)
    reason = short["learning_rate"].reason
    assert reason.startswith(f"cpt: short run: {SHORT_RUN_STEPS - 1} planned optimizer steps < {SHORT_RUN_STEPS}: "
                             "lr x3 = 1.5e-04")
    assert "advice_quality.json" in reason and "bits/char" in reason
    assert f"{SHORT_RUN_STEPS} planned optimizer steps (>= {SHORT_RUN_STEPS}, not a short run)" in long["learning_rate"].reason
    # a small corpus that the batch rule plans short (not --max-steps) gets the same factor
    _, small = decide(measurements(total_tokens=20_000))
    assert small["max_steps"].value < SHORT_RUN_STEPS and small["learning_rate"].value == pytest.approx(1.5e-4)


def test_sft_learning_rate_does_not_follow_the_run_length_yet():
    # sft (and classify, which trains as sft) is not measured: its value is the same at any run length
    short, long = decide_steps(SHORT_RUN_STEPS - 1, goal="sft"), decide_steps(10 * SHORT_RUN_STEPS, goal="sft")
    assert short["learning_rate"].value == long["learning_rate"].value == pytest.approx(8e-4 / 32)
    assert "short run" not in short["learning_rate"].reason


def test_embedding_learning_rate_follows_the_short_run_learning_rate():
    ctx = RuleContext(measurements=measurements(total_tokens=2_000_000_000, premium=5.3), facts=SMOLLM2,
                      profile=MARATHI, gpu_memory_gib=24.0, max_steps=100)
    decisions = apply_rules(ctx)
    assert decisions["modules_to_save"].value and decisions["learning_rate"].value == pytest.approx(1.5e-4)
    assert decisions["embedding_learning_rate"].value == pytest.approx(1.5e-5)


def test_alpha_reason_explains_the_seed_contradiction():
    _, decisions = decide()
    reason = decisions["lora_alpha"].reason
    assert "16 and 64" in reason and "sqrt" in reason
    assert decisions["use_rslora"].value is True


@pytest.mark.parametrize("gpu", [8, 12, 24, 48, 80])
def test_batch_fits_budget_and_accumulation_reaches_the_effective_batch(gpu):
    ctx, decisions = decide(measurements(total_tokens=300_000_000, chars=char_lengths(median_chars=1500)),
                            facts=LLAMA2_7B, gpu=gpu)
    assert ctx.estimate().total_gib <= gpu * BUDGET_SHARE
    per_device, accumulation = decisions["per_device_train_batch_size"].value, decisions["gradient_accumulation_steps"].value
    assert per_device * accumulation == decisions["batch_size"].value
    # One more sequence per device would not fit, or the step is already in one micro-batch, or the micro-step
    # already reaches the measured throughput peak (and the reason says which).
    if accumulation > 1:
        reason = decisions["per_device_train_batch_size"].reason
        if reason.startswith("GPU efficiency"):
            tokens = per_device * decisions["max_seq_length"].value
            assert gpu_curve(ctx).efficiency(tokens) >= SATURATED_SHARE
        else:
            assert reason.startswith("memory")
            assert ctx.estimate(batch_size=per_device * 2).total_gib > gpu * BUDGET_SHARE


def test_small_gpu_switches_a_7b_model_to_4bit_and_paged_optimizer():
    _, big = decide(facts=LLAMA2_7B, gpu=80)
    _, small = decide(facts=LLAMA2_7B, gpu=12)
    assert big["load_in_4bit"].value is False and big["optimizer"].value == "adamw_torch"
    assert small["load_in_4bit"].value is True and small["optimizer"].value == "paged_adamw_8bit"
    assert "GiB" in small["load_in_4bit"].reason


def test_gpu_too_small_for_any_configuration_is_one_line_error():
    with pytest.raises(BabeltuneError) as info:
        decide(facts=LLAMA2_7B, gpu=2)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--gpu-memory: 2GB is too small for llama-2-7b")
    need = int(re.search(r"needs (\d+) GiB", message).group(1))
    assert 4 <= need <= 8
    decide(facts=LLAMA2_7B, gpu=need)   # the size the message names is indeed enough


def test_early_stopping_consistent_with_checkpointing():
    _, decisions = decide(measurements(total_tokens=5_000_000))
    assert decisions["save_strategy"].value == decisions["evaluation_strategy"].value
    assert decisions["save_steps"].value % decisions["eval_steps"].value == 0
    assert decisions["early_stopping_patience"].value == 3
    # the run length is written in optimizer steps (what train runs), counted over the rows train builds
    assert decisions["max_steps"].value >= decisions["eval_steps"].value * 6
    assert "counted as train counts them" in decisions["max_steps"].reason


@pytest.mark.parametrize("goal", ["cpt", "sft"])
@pytest.mark.parametrize("tokens", [20_000, 50_000_000, 3_000_000_000])
def test_decisions_build_a_valid_train_config(tmp_path, goal, tokens):
    _, decisions = decide(measurements(total_tokens=tokens, premium=4.0), goal=goal)
    corpus = tmp_path / "c.txt"
    corpus.write_text("x\n", encoding="utf-8")
    given = given_decisions(language="mr", model="smollm2-135m", tokenizer=None, corpus=CorpusSpec(path=str(corpus)),
                            goal=goal)
    validated = validate_config(config_data(build_config(decisions, given)))   # as the YAML holds it
    assert validated.training.learning_rate == decisions["learning_rate"].value
    assert validated.model.max_seq_length == decisions["max_seq_length"].value
    assert validated.data.mode == goal


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1_000, 5_000_000_000), tpc=st.floats(0.15, 2.5), median=st.floats(20, 20_000),
       gpu=st.sampled_from([4, 8, 12, 16, 24, 40, 80, 141]), goal=st.sampled_from(["cpt", "sft"]),
       big=st.booleans(), premium=st.one_of(st.none(), st.floats(0.8, 8.0)))
def test_any_measurement_gives_a_fitting_valid_config_or_the_gpu_error(tokens, tpc, median, gpu, goal, big, premium):
    m = measurements(tokens_per_char=tpc, total_tokens=tokens, chars=char_lengths(300, median_chars=median),
                     premium=premium)
    try:
        ctx, decisions = decide(m, facts=LLAMA2_7B if big else SMOLLM2, gpu=gpu, goal=goal)
    except BabeltuneError as exc:
        assert str(exc).startswith(f"--gpu-memory: {gpu}GB is too small")
        return
    assert ctx.estimate().total_gib <= gpu * BUDGET_SHARE
    given = given_decisions(language="mr", model="m", tokenizer=None, corpus=CorpusSpec(path="corpus.txt"), goal=goal)
    validate_config(config_data(build_config(decisions, given)))


@pytest.mark.parametrize("gpu", [8.0, 24.0, 80.0])
def test_eval_batch_follows_the_training_micro_batch_and_says_how_many_passes(gpu):
    # Issue 12: evaluations ran in batches of 4 documents whatever the micro-batch, and on a GPU each forward
    # batch of short rows costs a near-fixed time: 38 batches per evaluation where 10 suffice.
    import math

    from babeltune.advisor.estimate import heldout_documents

    ctx, decisions = decide(measurements(total_tokens=400_000), gpu=gpu)
    rows = decisions["per_device_train_batch_size"].value
    assert decisions["per_device_eval_batch_size"].value == rows
    documents = heldout_documents(ctx)
    assert f"{math.ceil(documents / rows)} forward batches per evaluation of {documents:,} held-out" in decisions["per_device_eval_batch_size"].reason
