"""`advise --goal classify`: the labelled set sizes the run, and the reasons cite the measured class counts,
balance and rendered lengths; the written config trains as data.mode classify."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from babeltune.advisor.cli import advise
from babeltune.config import load_config

SAMPLE = Path(__file__).parent / "data" / "classify" / "mahasent_sample.csv"

pytest.importorskip("babeltune.models.facts", reason="model facts (models helper) not installed yet")


def run(*args):
    return CliRunner().invoke(advise, [str(a) for a in args] + ["--no-probe", "--gpu", "h100"])


def test_classify_advice_cites_classes_and_lengths(tiny_model_dir, tmp_path):
    out = tmp_path / "classify.yaml"
    result = run("--lang", "mr", "--corpus", SAMPLE, "--text-column", "tweet", "--goal", "classify",
                 "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.data.mode == "classify" and config.data.label_column == "label" and config.data.packing == "off"
    assert config.data.text_column == "tweet" and config.data.label_verbalizers == {}
    text = out.read_text(encoding="utf-8")
    assert ("# 3 classes in 180 labelled examples: '-1' 60 (33.3%), '0' 60 (33.3%), '1' 60 (33.3%); "
            "smallest/largest = 1.00, balanced") in text
    assert "majority-class baseline ('-1') = 33.3% accuracy, macro-F1 0.167" in text
    assert "the smallest class has 60 examples, so one example moves its recall by 1.7%" in text
    length_line = next(line for line in text.splitlines() if "rendered examples" in line and "p99" in line)
    assert "of examples have their text cut at its end (the label always fits)" in length_line
    assert "auto: each label is trained as its own text ('-1'" in text


def test_imbalanced_labels_point_at_macro_f1(tiny_model_dir, tmp_path):
    path = tmp_path / "skewed.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "sentiment"])
        lines = [line for line in (Path(__file__).parent / "data" / "text" / "mr.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
        for i, line in enumerate(lines[:40]):
            writer.writerow([line, "pos" if i % 4 else "neg"])
        writer.writerow(["", "pos"])
    result = run("--lang", "mr", "--corpus", path, "--goal", "classify", "--label-column", "sentiment",
                 "--model", tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    reason = json.loads(result.stdout)["parameters"]["data.label_column"]["reason"]
    assert reason.startswith("2 classes in 40 labelled examples (1 left out: row with an empty text): "
                             "'neg' 10 (25.0%), 'pos' 30 (75.0%); smallest/largest = 0.33, imbalanced")
    assert "majority-class baseline ('pos') = 75.0% accuracy, macro-F1 0.429" in reason


def test_missing_label_column_is_one_line(tiny_model_dir):
    result = run("--lang", "mr", "--corpus", SAMPLE, "--text-column", "tweet", "--goal", "classify",
                 "--label-column", "stars", "--model", tiny_model_dir)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: corpus: {SAMPLE}: no label column 'stars' (columns: tweet, label, political); "
                      "set --label-column to the column that holds the labels"]


def test_classify_reasons_agree_with_each_other(tiny_model_dir):
    from test_reason_consistency import contradictions

    from babeltune.advisor.advise import advise as run_advise
    from babeltune.corpus.reader import CorpusSpec

    advice = run_advise("mr", CorpusSpec(str(SAMPLE), text_column="tweet"), model=str(tiny_model_dir), goal="classify",
                        gpu="h100", probe=False)
    assert advice.decisions["learning_rate"].reason.startswith("classify: trained as sft (loss on the label tokens only); lr x alpha")
    assert contradictions(advice) == []
