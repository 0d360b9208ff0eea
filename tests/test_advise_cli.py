"""`advise` end to end on real text (the shipped Marathi UD sample): JSON keys, a YAML config that `train`
loads, the report PNG, --compare, and every bad input ending in one line, exit 2 and no file left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from babeltune.advisor.cli import advise
from babeltune.config import load_config

TEXT = Path(__file__).parent / "data" / "text"
MARATHI = TEXT / "mr.txt"
ENGLISH = TEXT / "en.txt"
HINDI_TABLE_PARAMETERS = [   # by the config key each sets (batch_size sets none: it is their product)
    "model.max_seq_length", "batch_size", "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps", "training.learning_rate", "training.optimizer", "training.weight_decay",
    "adapter.lora_alpha", "adapter.lora_dropout", "adapter.r", "adapter.target_modules", "adapter.bias",
    "training.gradient_checkpointing", "model.attn_implementation", "training.num_train_epochs", "training.max_steps",
    "eval.evaluation_strategy", "eval.save_strategy", "eval.early_stopping_patience",
]



def run(*args: str):
    # --no-probe: timing the model on this CPU is tested in test_estimate.py; here it would only cost time
    extra = ["--no-probe"] if "--help" not in args else []
    return CliRunner().invoke(advise, [str(a) for a in args] + extra, catch_exceptions=False)


@pytest.fixture(scope="module")
def marathi_json(tiny_model_dir):
    result = run("--lang", "marathi", "--corpus", MARATHI, "--model", tiny_model_dir, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_is_instant_and_imports_no_torch():
    code = "import sys, babeltune.advisor.cli; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    result = run("--help")
    assert result.exit_code == 0 and "--gpu-memory" in result.output and "--compare" in result.output


def test_json_has_measurements_and_every_seed_parameter(marathi_json):
    data = marathi_json
    assert data["language"] == "mr"
    m = data["measurements"]
    for key in ("characters", "documents", "tokens", "tokens_per_char", "tokens_per_char_ci95"):
        assert key in m, key
    assert m["documents"] == 200 and m["characters"] == sum(len(line.strip()) for line in
                                                             MARATHI.read_text(encoding="utf-8").splitlines())
    for name in HINDI_TABLE_PARAMETERS:
        assert set(data["parameters"][name]) == {"value", "reason", "evidence"}, name
        assert data["parameters"][name]["reason"], name
    assert data["memory"]["total_gib"] <= data["memory"]["budget_gib"] == pytest.approx(24 * 0.9)
    assert "no --gpu-memory given: advising for a common 24 GB GPU" in data["notes"]
    # max_seq_length covers the measured p95 of document lengths
    assert data["parameters"]["model.max_seq_length"]["value"] >= m["doc_tokens_percentiles"]["p95"]


def test_out_writes_commented_yaml_that_train_loads(tmp_path, tiny_model_dir):
    out = tmp_path / "mr.yaml"
    result = run("--lang", "mr", "--corpus", MARATHI, "--model", tiny_model_dir, "--out", out,
                 "--gpu-memory", "16GB", "--report", tmp_path / "report")
    assert result.exit_code == 0, result.output
    config = load_config(out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# babeltune ")
    assert "# command: " in text and "--gpu-memory 16GB" in text
    assert "tokens/char" in text and "memory estimate:" in text
    lines = text.splitlines()
    for index, line in enumerate(lines):      # every key inside a section has its reason just above
        if line.startswith("  ") and not line.lstrip().startswith("#") and line.split(":")[0].strip() not in (
                "doc_split", "text_field", "text_column"):
            assert lines[index - 1].lstrip().startswith("# "), line
    assert config.language == "mr"
    assert config.model.max_seq_length == yaml.safe_load(text)["model"]["max_seq_length"]
    png = tmp_path / "report" / "doc_token_lengths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "memory estimate:" in result.stderr


def test_jsonl_corpus_and_sft_goal_reach_the_config(tmp_path, tiny_model_dir):
    # raw text in a JSONL field trains as cpt; sft needs instruction/response records (a .txt or a "body"
    # field under --goal sft is an error now: train would reject that config, see test_advice_judgement.py)
    lines = [line for line in MARATHI.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = tmp_path / "mr.jsonl"
    corpus.write_text("".join(json.dumps({"body": line}, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "cpt.yaml"
    result = run("--lang", "mar", "--corpus", corpus, "--text-field", "body", "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert (config.data.mode, config.data.text_field, config.data.packing) == ("cpt", "body", "blocks")
    assert f"{len(lines):,} documents" in out.read_text(encoding="utf-8")
    pairs = Path(__file__).parent / "data" / "sft" / "mr_pairs.jsonl"
    out = tmp_path / "sft.yaml"
    result = run("--lang", "mar", "--corpus", pairs, "--goal", "sft", "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert (config.data.mode, config.data.packing) == ("sft", "padding_free")   # whole examples packed, no padding
    assert config.adapter.modules_to_save == []
    records = len(pairs.read_text(encoding="utf-8").splitlines())
    assert f"{records:,} documents" in out.read_text(encoding="utf-8")


def test_table_output_without_out_or_json(tiny_model_dir):
    pairs = Path(__file__).parent / "data" / "sft" / "mr_pairs.jsonl"
    result = run("--lang", "मराठी", "--corpus", pairs, "--model", tiny_model_dir, "--goal", "sft")
    assert result.exit_code == 0, result.output
    assert "learning_rate" in result.stdout and "q_proj" in result.stdout and "memory estimate" in result.stdout


def test_compare_names_the_best_fit(tiny_model_dir):
    result = run("--lang", "mr", "--corpus", MARATHI, "--compare", "--model", tiny_model_dir,
                 "--tokenizer", "smollm2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_spec = {c["spec"]: c["tokens_per_char"] for c in data["candidates"]}
    assert len(by_spec) == 2
    assert data["best"] == min(by_spec, key=by_spec.get)
    assert data["verdict"].startswith(f"best fit: {data['best']}")


# --------------------------------------------------------------------------- bad input


def bad_inputs(tmp_path: Path, model: Path) -> dict[str, tuple[list, str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "blob.txt").write_bytes(bytes(range(256)) * 8)
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes("मराठी ओळ\n".encode() + b"\xff\xfe broken\n")
    base = ["--model", model]
    return {
        "unknown language": (["--lang", "klingonish", "--corpus", MARATHI, *base], "klingonish"),
        "missing corpus": (["--lang", "mr", "--corpus", tmp_path / "nope", *base], "nope"),
        "empty corpus": (["--lang", "mr", "--corpus", empty, *base], "empty.txt"),
        "only binary files": (["--lang", "mr", "--corpus", binary, *base], "blob.txt"),
        "bad utf-8 strict": (["--lang", "mr", "--corpus", bad_utf8, "--strict", *base], "bad.txt"),
        "other language": (["--lang", "mr", "--corpus", ENGLISH, *base], "--lang"),
        "missing model": (["--lang", "mr", "--corpus", MARATHI, "--model", tmp_path / "no-model"], "no-model"),
        "bad gpu size": (["--lang", "mr", "--corpus", MARATHI, "--gpu-memory", "lots", *base], "--gpu-memory"),
        "gpu too small": (["--lang", "mr", "--corpus", MARATHI, "--gpu-memory", "0.5GB", *base], "too small"),
        "two models without --compare": (["--lang", "mr", "--corpus", MARATHI, *base, *base], "--model"),
    }


@pytest.mark.parametrize("case", ["unknown language", "missing corpus", "empty corpus", "only binary files",
                                  "bad utf-8 strict", "other language", "missing model", "bad gpu size",
                                  "gpu too small", "two models without --compare"])
def test_bad_input_is_one_line_exit_2_and_leaves_no_file(tmp_path, tiny_model_dir, case):
    args, needle = bad_inputs(tmp_path, tiny_model_dir)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run(*args, "--out", out_dir / "config.yaml")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_smollm2_on_marathi_reports_its_reference_figure(tmp_path):
    result = run("--lang", "marathi", "--corpus", MARATHI, "--model", "smollm2-135m", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # /work/shared/corpora/README.md: SmolLM2 spends 1.159 tokens/char on the full UD Marathi file.
    assert data["measurements"]["tokens_per_char"] == pytest.approx(1.16, abs=0.03)
    assert data["model_facts"]["vocab_size"] == 49152


@pytest.mark.slow
def test_without_model_picks_the_installed_builtin_with_fewest_tokens_per_char():
    result = run("--lang", "mr", "--corpus", MARATHI, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    note = next(n for n in data["notes"] if n.startswith("no --model given"))
    assert f"picked {data['model']}" in note
    best = min(data["candidates"], key=lambda c: c["tokens_per_char"])
    assert best["spec"] == data["model"]
