"""The config schema and `train`'s handling of it: every shipped YAML validates; errors are collected once,
one `key: message` line each, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from babeltune.config import TrainConfig, describe_fields, load_config, validate_config
from babeltune.errors import BabeltuneError
from babeltune.trainer.cli import train

from conftest import DATA

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "lang_profiles", "node_modules", ".venv", "build", "runs"}


def shipped_train_configs() -> list[Path]:
    """Every YAML in the repo whose top level looks like a train config (model + training sections)."""
    found = []
    for path in sorted(REPO.rglob("*.y*ml")):
        if SKIP_DIRS & set(path.relative_to(REPO).parts) or path.suffix not in (".yaml", ".yml"):
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and {"model", "training"} <= set(data):
            found.append(path)
    return found


def test_the_repo_ships_train_configs():
    names = {p.name for p in shipped_train_configs()}
    assert {"tiny-cpt.yaml", "tiny-sft.yaml", "tiny-padding-free.yaml"} <= names


@pytest.mark.parametrize("path", shipped_train_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert config.schema_version == 1 and config.model.max_seq_length >= 8


def valid() -> dict:
    return yaml.safe_load((DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8"))


def errors_for(data: dict) -> list[str]:
    with pytest.raises(BabeltuneError) as info:
        validate_config(data, source="c.yaml")
    return str(info.value).splitlines()


def test_unknown_keys_get_a_did_you_mean():
    data = valid()
    data["data"]["trian"] = data["data"].pop("train")
    data["trainig"] = {}
    lines = errors_for(data)
    assert "c.yaml: data.trian: unknown key; did you mean 'train'?" in lines
    assert "c.yaml: trainig: unknown key; did you mean 'training'?" in lines
    assert "c.yaml: data.train: required key is missing" in lines


def test_all_problems_are_reported_at_once_one_line_each():
    data = valid()
    data["adapter"]["r"] = "sixteen"
    data["training"]["learning_rate"] = 5
    data["model"]["dtype"] = "float8"
    lines = errors_for(data)
    assert len(lines) == 3 and all(line.startswith("c.yaml: ") for line in lines)
    assert any(line.startswith("c.yaml: adapter.r:") and "'sixteen'" in line for line in lines)
    assert any(line.startswith("c.yaml: training.learning_rate:") for line in lines)
    assert any(line.startswith("c.yaml: model.dtype:") and "float8" in line for line in lines)


def test_max_steps_and_epochs_cannot_both_be_set_and_the_message_says_which_would_win():
    data = valid()
    data["training"]["num_train_epochs"] = 2
    (line,) = errors_for(data)
    assert "max_steps=12 and num_train_epochs=2" in line and "max_steps silently win" in line


@pytest.mark.parametrize("change, expected", [
    ({"eval": {"evaluation_strategy": "no", "early_stopping_patience": 2}}, "eval.early_stopping_patience: early stopping needs"),
    ({"eval": {"evaluation_strategy": "steps", "eval_steps": None}}, "eval.eval_steps: evaluation_strategy is steps"),
    ({"eval": {"early_stopping_patience": 2, "eval_steps": 5}}, "training.save_steps: 4 must be a multiple of eval.eval_steps (5)"),
    ({"adapter": {"embedding_learning_rate": 1e-5}}, "adapter.embedding_learning_rate: set only with modules_to_save"),
    ({"training": {"optimizer": "adamw_torh"}}, "did you mean 'adamw_torch'"),
])
def test_cross_field_checks(change, expected):
    data = valid()
    for section, values in change.items():
        data[section].update(values)
    assert any(expected in line for line in errors_for(data))


def test_yaml_no_and_off_mean_the_words():
    data = valid()
    data["eval"]["evaluation_strategy"] = False       # `evaluation_strategy: no` in YAML 1.1
    data["data"]["packing"] = False                   # `packing: off`
    config = validate_config(data)
    assert config.eval.evaluation_strategy == "no" and config.data.packing == "off"


def test_every_field_has_a_description():
    described = describe_fields()
    assert "training.max_nonfinite_losses" in described
    assert all(text for key, text in described.items()), [k for k, t in described.items() if not t]


def run_cli(*args: str):
    return CliRunner().invoke(train, list(args))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_config_errors_exit_2_without_traceback(tmp_path):
    data = valid()
    data["adapter"]["lora_alpah"] = 8
    data["training"]["learning_rate"] = "fast"
    path = write(tmp_path, yaml.safe_dump(data))
    result = run_cli("--config", str(path))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert f"error: {path}: adapter.lora_alpah: unknown key; did you mean 'lora_alpha'?" in lines
    assert any(line.startswith(f"error: {path}: training.learning_rate:") for line in lines)
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("text, expected", [
    ("model: [unclosed\n", "malformed YAML"),
    ("", "the config is empty"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_cli_malformed_files_are_one_line(tmp_path, text, expected):
    result = run_cli("--config", str(write(tmp_path, text)))
    assert result.exit_code == 2 and expected in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_missing_config_file(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "config file not found" in result.stderr


def test_dry_run_shows_overrides_the_max_steps_switch_and_the_backend_translation(tmp_path):
    data = valid()
    data["training"].pop("max_steps")
    data["training"]["num_train_epochs"] = 3
    path = write(tmp_path, yaml.safe_dump(data))
    result = run_cli("--config", str(path), "--dry-run", "--max-steps", "7", "--set", "adapter.r=32",
                     "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert "--max-steps 7 replaces training.num_train_epochs (3)" in result.stderr
    shown = yaml.safe_load(result.stdout.split("# backend")[0])
    assert shown["training"]["max_steps"] == 7 and shown["training"]["num_train_epochs"] is None
    assert shown["adapter"]["r"] == 32 and shown["training"]["output_dir"] == str(tmp_path / "out")
    assert "# backend hf-peft: translate()" in result.stdout
    translated = yaml.safe_load(result.stdout.split("translate()")[1])
    assert isinstance(translated, dict) and translated


def test_unknown_backend_is_a_clean_error(tmp_path):
    path = write(tmp_path, (DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8"))
    result = run_cli("--config", str(path), "--dry-run", "--backend", "hf-pefft")
    assert result.exit_code == 2 and "hf-pefft" in result.stderr and "Traceback" not in result.stderr


def test_console_script_module_entry_exits_2(tmp_path):
    path = write(tmp_path, "schema_version: 1\nlanguage: mr\nmodel: {name: x}\n")
    done = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: {path}: model.max_seq_length: required key is missing" in done.stderr.splitlines()
    assert f"error: {path}: training: required key is missing" in done.stderr.splitlines()


def test_schema_round_trips_through_the_resolved_yaml(tmp_path):
    from babeltune.trainer.export import resolved_config_yaml

    config = load_config(DATA / "configs" / "tiny-sft.yaml")
    again = validate_config(yaml.safe_load(resolved_config_yaml(config)))
    assert again == config and isinstance(again, TrainConfig)


def test_forgetting_languages_must_have_shipped_reference_text():
    from conftest import make_config

    assert make_config().eval.forgetting == ["en"]
    assert make_config(eval={"forgetting": ["HI", "en"]}).eval.forgetting == ["hi", "en"]
    with pytest.raises(Exception) as info:
        make_config(eval={"forgetting": ["xx"]})
    assert "'xx' has no shipped reference text" in str(info.value) and "(or [] for none)" in str(info.value)


def test_forgetting_skips_the_runs_own_language_and_caps_the_sentences():
    from conftest import make_config

    from babeltune.trainer.run import FORGETTING_SENTENCES, forgetting_texts

    hindi_run = make_config(eval={"forgetting": ["en", "hi", "ko"]}).model_copy(update={"language": "hin"})
    texts = forgetting_texts(hindi_run)
    assert set(texts) == {"en", "ko"} and all(len(t) == FORGETTING_SENTENCES for t in texts.values())
    assert forgetting_texts(make_config(eval={"forgetting": []})) == {}
