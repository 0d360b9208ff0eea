"""Classification training on CPU: IA3 + BitFit on a tiny Llama that has bias terms, the trainable share in the
log and manifest, and eval --task classify with the adapter's own settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from babeltune.config import validate_config

from conftest import build_tiny_llama

SAMPLE = Path(__file__).parent / "data" / "classify" / "mahasent_sample.csv"
VERBALIZERS = {"-1": "negative", "0": "neutral", "1": "positive"}


@pytest.fixture(scope="module")
def biased_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny Llama with attention_bias and mlp_bias on (q/k/v/o and gate/up/down biases), same tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama-bias")
    for path in tiny_model_dir.iterdir():
        if path.name.startswith("tokenizer") or path.name == "special_tokens_map.json":
            shutil.copy(path, folder / path.name)
    build_tiny_llama(folder, vocab_size=len(AutoTokenizer.from_pretrained(tiny_model_dir)),
                     attention_bias=True, mlp_bias=True)
    return folder


def config_for(model_dir: Path, output_dir: Path, **backend_options):
    return validate_config({
        "language": "mr", "model": {"name": str(model_dir), "max_seq_length": 64},
        "data": {"train": str(SAMPLE), "mode": "classify", "text_column": "tweet", "label_column": "label",
                 "label_verbalizers": VERBALIZERS, "eval_fraction": 0.1},
        "training": {"output_dir": str(output_dir), "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                     "max_steps": 3, "save_steps": 3, "logging_steps": 1, "gradient_checkpointing": False},
        "eval": {"evaluation_strategy": "no", "max_eval_documents": 12},
        "backend": {"name": "ia3", "options": backend_options}})


def test_bitfit_on_off_changes_the_trainable_count(biased_model_dir, tmp_path):
    from babeltune.plugins.common import trainable_share
    from babeltune.trainer.backend import Runtime
    from babeltune.trainer.plugins import available_backends

    ia3 = available_backends()["ia3"]
    runtime = Runtime(device="cpu", precision="fp32", model_dir=str(biased_model_dir))
    on = ia3.load(config_for(biased_model_dir, tmp_path), runtime)
    off = ia3.load(config_for(biased_model_dir, tmp_path, bitfit=False), runtime)
    biases = sum(p.numel() for n, p in on.model.named_parameters() if n.endswith(".bias"))
    # 2 layers x (q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64)
    assert biases == 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)
    trainable_on, total_on, share_on = trainable_share(on.model)
    trainable_off, total_off, _ = trainable_share(off.model)
    assert total_on == total_off and trainable_on - trainable_off == biases
    assert any(note.startswith("BitFit: 14 bias tensors") for note in on.notes)
    assert "BitFit: off (backend.options.bitfit: false)" in off.notes
    assert any(note.startswith(f"trainable share: {share_on:.3f}%") for note in on.notes)


def test_train_classify_with_ia3_bitfit_then_eval_with_the_adapter(biased_model_dir, tmp_path):
    from click.testing import CliRunner

    from babeltune.cli import cli
    from babeltune.trainer.run import run_training

    lines: list[str] = []
    out = tmp_path / "run"
    result = run_training(config_for(biased_model_dir, out), echo=lines.append, evaluate=False)
    assert result.steps == 3
    log = "\n".join(lines)
    assert "ia3: BitFit: 14 bias tensors" in log and "ia3: trainable share:" in log
    manifest = json.loads((out / "manifest.json").read_text())
    share = manifest["trainable_parameters"]
    assert share["trainable"] > 0 and share["percent"] == pytest.approx(100 * share["trainable"] / share["total"], abs=1e-3)
    assert manifest["data"]["label_verbalizers"] == VERBALIZERS and manifest["data"]["label_column"] == "label"

    # eval reads the labels, columns and prompt from the adapter's resolved config
    report = CliRunner().invoke(cli, ["eval", "--task", "classify", "--model", str(biased_model_dir), "--adapter",
                                      str(out / "adapter"), "--corpus", f"tweets={SAMPLE}", "--max-documents", "12",
                                      "--json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    assert data["labels"] == VERBALIZERS and "babeltune_config.yaml" in data["settings_from"]
    tweets = data["corpora"]["tweets"]
    assert tweets["adapter"] is not None and sum(map(sum, tweets["adapter"]["confusion"])) == 12

    # the base numbers are the base model's: the same as an eval without the adapter (BitFit replaced the biases
    # in place, so scoring "base" under PEFT's disable_adapter() would have scored the trained biases)
    plain = CliRunner().invoke(cli, ["eval", "--task", "classify", "--model", str(biased_model_dir), "--corpus",
                                     f"tweets={SAMPLE}", "--max-documents", "12", "--json",
                                     "--text-column", "tweet", "--labels", "-1=negative,0=neutral,1=positive"])
    assert plain.exit_code == 0, plain.output
    alone = json.loads(plain.stdout)["corpora"]["tweets"]["base"]
    assert tweets["base"] == alone
    assert tweets["adapter"]["mean_gold_label_logprob"] != alone["mean_gold_label_logprob"]
