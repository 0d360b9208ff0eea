"""Classification (data.mode classify, eval --task classify): config, data rows with -100 on the prompt,
label scoring, metrics, CLI errors. Tiny random models only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from babeltune.config import TrainConfig, validate_config
from babeltune.errors import BabeltuneError
from babeltune.trainer import classify as cl

SAMPLE = Path(__file__).parent / "data" / "classify" / "mahasent_sample.csv"
VERBALIZERS = {"-1": "negative", "0": "neutral", "1": "positive"}


def classify_config(train=SAMPLE, **data) -> TrainConfig:
    return validate_config({
        "language": "mr", "model": {"name": "tiny", "max_seq_length": 48},
        "data": {"train": str(train), "mode": "classify", "text_column": "tweet", "label_column": "label",
                 "label_verbalizers": VERBALIZERS, **data},
        "training": {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2},
        "eval": {"evaluation_strategy": "no"}})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------- config


def test_config_accepts_classify_and_reads_yaml_number_labels(tmp_path):
    from babeltune.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("language: mr\nmodel: {name: tiny, max_seq_length: 64}\n"
                    "data: {train: x.csv, mode: classify, label_column: sentiment,\n"
                    "       label_verbalizers: {-1: negative, 0: neutral, 1: positive}}\n"
                    "training: {per_device_train_batch_size: 1, learning_rate: 0.001, max_steps: 1}\n"
                    "eval: {evaluation_strategy: 'no'}\n", encoding="utf-8")
    config = load_config(path)
    assert config.data.mode == "classify" and config.data.label_column == "sentiment"
    assert config.data.label_verbalizers == VERBALIZERS          # YAML int keys read as the data's text
    assert config.data.classify_prompt == "{text}\nLabel:"


def test_config_rejects_bad_prompt_and_shared_verbalizers():
    with pytest.raises(BabeltuneError) as err:
        classify_config(classify_prompt="Sentiment:", label_verbalizers={"a": "yes", "b": "yes"})
    lines = str(err.value).splitlines()
    assert any(line.startswith("config: data.classify_prompt: must contain {text} exactly once") for line in lines)
    assert any(line.startswith("config: data.label_verbalizers: verbaliser 'yes' is given to more than one label")
               for line in lines)


# --------------------------------------------------------------------------------------------- data


def test_rows_train_only_the_label_tokens(tokenizer):
    from babeltune.trainer.data import IGNORE_INDEX, prepare_data

    config = classify_config()
    prepared = prepare_data(config, tokenizer)
    label_ids = {verb: tokenizer(" " + verb, add_special_tokens=False)["input_ids"] for verb in VERBALIZERS.values()}
    eos = tokenizer.eos_token_id
    assert prepared.stats["train_documents"] + prepared.stats["eval_documents"] == 180
    per_class = prepared.stats["train_examples_per_class"]
    held = prepared.stats["eval_examples_per_class"]
    assert {label: per_class[label] + held[label] for label in VERBALIZERS} == {"-1": 60, "0": 60, "1": 60}
    seen = set()
    for row in prepared.train.rows:
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) <= 48
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert trained == list(range(trained[0], len(ids)))           # one trained span, at the end
        span = labels[trained[0]:]
        assert span[-1] == eos and ids[trained[0]:] == span
        verb = next(v for v, t in label_ids.items() if span[:-1] == t)
        seen.add(verb)
    assert seen == set(VERBALIZERS.values())
    assert any("classify: '-1' -> 'negative'" in note for note in prepared.notes)


def test_long_text_is_cut_so_the_label_fits(tokenizer):
    label = [5, 6, 7]
    row = cl.encode_example(tokenizer, "{text}\nLabel:", "मराठी " * 200, label, 32, tokenizer.eos_token_id)
    assert len(row["input_ids"]) == 32 and row["input_ids"][-4:] == label + [tokenizer.eos_token_id]
    tail = tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]
    assert row["input_ids"][-4 - len(tail):-4] == tail                 # the prompt's end is kept


def test_skipped_rows_are_counted_and_strict_stops(tmp_path, tokenizer):
    from babeltune.trainer.data import prepare_data

    rows = [[f"tweet number {i}", str(i % 2)] for i in range(20)] + [["", "1"], ["no label here", ""]]
    path = write_csv(tmp_path / "t.csv", ["tweet", "label"], rows)
    prepared = prepare_data(classify_config(path, label_verbalizers={}), tokenizer)
    assert prepared.stats["label_verbalizers"] == {"0": "0", "1": "1"}          # auto: the labels themselves
    notes = "\n".join(prepared.notes)
    assert "row with an empty text" in notes and "row with an empty label ('label')" in notes
    assert prepared.stats["skipped_records"] == 2
    assert {entry["reason"] for entry in prepared.stats["skipped"]} == {"row with an empty text",
                                                                        "row with an empty label ('label')"}
    with pytest.raises(BabeltuneError, match="row with an empty text"):
        prepare_data(classify_config(path, label_verbalizers={}, strict=True), tokenizer)


def test_label_outside_the_verbalizers_is_an_error(tmp_path, tokenizer):
    from babeltune.trainer.data import prepare_data

    path = write_csv(tmp_path / "t.csv", ["tweet", "label"], [["a b", "-1"], ["c d", "2"], ["e f", "1"]])
    with pytest.raises(BabeltuneError, match="label '2' is not in data.label_verbalizers"):
        prepare_data(classify_config(path), tokenizer)


def test_verbaliser_that_begins_another_is_refused(tokenizer):
    space = cl.LabelSpace(["a", "b"], ["pos", "positive"])
    ids = [tokenizer(" " + v, add_special_tokens=False)["input_ids"] for v in space.verbalizers]
    if ids[1][:len(ids[0])] != ids[0]:
        pytest.skip("this tokenizer splits the two differently")
    with pytest.raises(BabeltuneError, match="begin those of"):
        cl.label_token_ids(tokenizer, space)


# --------------------------------------------------------------------------------------------- metrics


def test_macro_f1_and_accuracy_by_hand():
    gold, pred = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 2/4; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert cl.macro_f1(gold, pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert cl.accuracy(gold, pred) == pytest.approx(4 / 6)
    assert cl.confusion_matrix(gold, pred, 3) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # a class in neither gold nor predictions does not count (sklearn's default label set)
    assert cl.macro_f1([0, 0], [0, 1], 3) == pytest.approx((2 / 3 + 0) / 2)
    label, scores = cl.majority_baseline([0, 1, 1, 2], 3)
    assert label == 1 and scores.accuracy == 0.5
    assert scores.macro_f1 == pytest.approx((0 + 2 * 2 / (2 * 2 + 2 + 0) + 0) / 3)


# --------------------------------------------------------------------------------------------- scoring


class _RiggedLM:
    """Logits that put +10 on label A's tokens when the cue token is in the row, else on label B's."""

    def __init__(self, vocab: int, cue: int, favoured_a: list[int], favoured_b: list[int]):
        import torch

        self.vocab, self.cue = vocab, cue
        self.a, self.b = torch.tensor(favoured_a), torch.tensor(favoured_b)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.weight

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep):
        import torch
        from types import SimpleNamespace

        logits = torch.zeros(input_ids.shape[0], logits_to_keep, self.vocab)
        for row, ids in enumerate(input_ids):
            favoured = self.a if (ids == self.cue).any() else self.b
            logits[row, :, favoured] = 10.0
        return SimpleNamespace(logits=logits)


def test_scoring_picks_the_rigged_label(tokenizer):
    space = cl.LabelSpace(["1", "-1"], ["positive", "negative"])
    ids = cl.label_token_ids(tokenizer, space)
    cue = tokenizer("!", add_special_tokens=False)["input_ids"][0]
    assert all(cue not in x for x in ids)
    model = _RiggedLM(len(tokenizer), cue, ids[0], ids[1])
    texts = ["चांगला दिवस !", "वाईट", "short", "a much longer text with the cue at the end !"]
    scores = cl.score_labels(model, tokenizer, texts, space, "{text}\nLabel:", batch_size=3)
    assert cl.predictions(scores) == [0, 1, 1, 0]


def test_batched_left_padded_scores_equal_one_by_one(tiny_model_dir, tokenizer):
    """The batched scores (left padding, position ids, logits_to_keep) equal a plain forward pass per example."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    space = cl.LabelSpace(["-1", "0", "1"], ["negative", "neutral", "very positive"])
    ids = cl.label_token_ids(tokenizer, space)
    texts = ["हा चित्रपट छान होता", "ok", "खूप वाईट अनुभव, पुन्हा नाही"]
    batched = cl.score_labels(model, tokenizer, texts, space, "{text}\nLabel:", batch_size=3)
    for i, text in enumerate(texts):
        prompt = cl.prompt_ids(tokenizer, "{text}\nLabel:", text, 512)
        for c, label in enumerate(ids):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + label])).logits[0]
            logprobs = torch.log_softmax(logits.double(), -1)
            expected = sum(float(logprobs[len(prompt) - 1 + k, token]) for k, token in enumerate(label))
            assert batched[i, c].item() == pytest.approx(expected, abs=1e-3)


# --------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    from click.testing import CliRunner

    from babeltune.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_missing_label_column_is_one_line(tiny_model_dir):
    result = run_cli("eval", "--task", "classify", "--model", tiny_model_dir, "--corpus", f"mr={SAMPLE}",
                     "--text-column", "tweet", "--label-column", "sentiment")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: corpus: {SAMPLE}: no label column 'sentiment' (columns: tweet, label, political); "
                     "set --label-column to the column that holds the labels"]
    assert "Traceback" not in result.output


def test_cli_bad_labels_option_is_one_line(tiny_model_dir):
    result = run_cli("eval", "--task", "classify", "--model", tiny_model_dir, "--corpus", f"mr={SAMPLE}",
                     "--labels", "-1:negative")
    assert result.exit_code == 2 and "error: --labels '-1:negative': expected LABEL=TEXT pairs" in result.output


def test_cli_classify_base_model_table_json_and_png(tiny_model_dir, tmp_path):
    report_dir = tmp_path / "report"
    result = run_cli("eval", "--task", "classify", "--model", tiny_model_dir, "--corpus", f"tweets={SAMPLE}",
                     "--text-column", "tweet", "--labels", "-1=negative,0=neutral,1=positive", "--max-documents", 30,
                     "--batch-size", 8, "--json", "--report", report_dir)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    tweets = report["corpora"]["tweets"]
    assert tweets["examples"] == 30 and report["labels"] == VERBALIZERS and tweets["adapter"] is None
    assert sum(map(sum, tweets["base"]["confusion"])) == 30
    assert 0 <= tweets["base"]["macro_f1"] <= 1
    counts = tweets["class_counts"]
    assert tweets["majority_class"]["accuracy"] == pytest.approx(max(counts.values()) / 30, abs=1e-4)
    png = (report_dir / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG") and (report_dir / "classify.json").is_file()


def test_jsonl_number_labels_and_missing_label_column_at_train_time(tmp_path, tokenizer):
    from babeltune.trainer.data import prepare_data

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"वाक्य {i}", "stars": i % 2 * 2 - 1}) + "\n" for i in range(12)),
                    encoding="utf-8")
    prepared = prepare_data(classify_config(path, text_column=None, label_column="stars",
                                            label_verbalizers={"-1": "bad", "1": "good"}), tokenizer)
    assert sum(prepared.stats["train_examples_per_class"].values()) + prepared.stats["eval_documents"] == 12
    assert set(prepared.stats["train_examples_per_class"]) == {"-1", "1"}          # JSON -1 / 1 read as "-1" / "1"
    with pytest.raises(BabeltuneError) as err:
        prepare_data(classify_config(path, text_column=None, label_column="label"), tokenizer)
    assert str(err.value) == (f"corpus: {path}: no label column 'label' (columns: text, stars); "
                              "set data.label_column to the column that holds the labels")
