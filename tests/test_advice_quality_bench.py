"""bench/advice_quality.py (issue 18): the copied configs are the published values and load as babeltune configs;
the split keeps test text out of training; the summary names the winner and checks the targets. The training
path itself is exercised by `python3 bench/advice_quality.py --smoke` (tiny random Llama, CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("advice_quality", ROOT / "bench" / "advice_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def advised(tiny_model_dir):
    from babeltune.advisor.advise import advise, config_data
    from babeltune.corpus.reader import CorpusSpec

    advice = advise("mr", CorpusSpec(str(ROOT / "tests" / "data" / "text" / "mr.txt")), model=str(tiny_model_dir),
                    gpu_memory=80, probe=False)
    return config_data(advice.config)


def test_copied_configs_hold_the_published_values_and_validate(bench, advised):
    from babeltune.config import validate_config

    unsloth = bench.unsloth_defaults(advised)
    a, t = unsloth["adapter"], unsloth["training"]
    assert (a["r"], a["lora_alpha"], a["lora_dropout"], len(a["target_modules"]), a["use_rslora"]) == (16, 16, 0.0, 7, False)
    assert (t["learning_rate"], t["lr_scheduler_type"], t["warmup_steps"], t["max_steps"], t["weight_decay"]) == (2e-4, "linear", 5, 60, 0.01)
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"], unsloth["data"]["packing"]) == (2, 4, "off")
    seed, facts = bench.seed_table(advised, train_documents=1000, cap=100)
    a, t = seed["adapter"], seed["training"]
    assert (a["r"], a["lora_alpha"], a["lora_dropout"], a["target_modules"]) == (8, 64, 0.1, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert (t["learning_rate"], t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (2e-5, 1, 4)
    assert seed["eval"]["eval_steps"] == 100 and seed["eval"]["early_stopping_patience"] == 3
    assert facts == {"uncapped_steps": 3 * 238, "capped": True} and t["max_steps"] == 100
    assert unsloth["model"]["max_seq_length"] == seed["model"]["max_seq_length"] == 512   # the tiny model's context
    for config in (unsloth, seed, *bench.grid_variants(advised).values()):
        validate_config(config)
    grid = bench.grid_variants(advised)
    assert len(grid) == 8 and {c["adapter"]["r"] for c in grid.values()} == {2, 4, 8}


def test_test_split_is_seeded_and_never_trained_on(bench):
    documents = [f"sentence {i}" for i in range(200)] + ["sentence 7"]      # an exact repeat of a test candidate
    train, test = bench.split_test(documents, max_test=300)
    assert len(test) == 20 and not set(test) & set(train)
    assert bench.split_test(documents, max_test=300) == (train, test)
    assert len(bench.split_test(documents, max_test=5)[1]) == 5


def test_summary_names_the_winner_and_the_targets(bench):
    def run(after, en_after=4.0, seconds=10.0):
        return {"scores": {"hi": {"before": 5.0, "after": after}, "en": {"before": 4.0, "after": en_after}}, "gpu_s": seconds}

    cells = {"hi:a": {"language": "hi", "runs": {"advised": run(3.8, 4.04), "unsloth-defaults": run(4.4, 4.0, 20),
                                                 "seed-table": run(4.9), "grid lr x3 r x1": run(3.7)}},
             "hi:b": {"language": "hi", "runs": {"advised": run(4.5), "unsloth-defaults": run(4.4)}}}
    s = bench.summary({"cells": cells})
    a, b = s["cells"]["hi:a"], s["cells"]["hi:b"]
    assert a["winner"] == "advised" and a["margin"] == pytest.approx((4.4 - 3.8) / 4.4)
    assert a["english_change"] == pytest.approx(0.01) and a["slowest_gpu_s"] == 20
    assert a["grid_best"] == "grid lr x3 r x1" and a["grid_gap"] == pytest.approx((3.8 - 3.7) / 3.7)
    assert b["winner"] == "unsloth-defaults" and s["advised_best"] == "1/2"
    assert s["targets"] == {"advised best in >= 80% of cells": False, "within 2% of grid-best": False,
                            "English rise <= 2%": True}
