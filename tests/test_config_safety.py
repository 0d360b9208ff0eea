"""The config loader's limits and the schema's ranges (issue 17, items 4 and 12): a YAML bomb, an
oversized or too deeply nested file and values the libraries underneath cannot take (infinite epochs,
seeds numpy refuses, a max_seq_length beyond the model's position embeddings, NUL in a path) all end
in one `error:` line per problem naming the key, before anything is loaded."""

from __future__ import annotations

import math
import time
import typing

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from babeltune.config import (MAX_CONFIG_BYTES, MAX_SEED, MAX_SEQ_LENGTH, TrainConfig, apply_overrides, load_config,
                              validate_config)
from babeltune.errors import BabeltuneError

from conftest import DATA

TINY_CPT = (DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8")


def valid() -> dict:
    return yaml.safe_load(TINY_CPT)


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_lines(path, overrides=()) -> list[str]:
    with pytest.raises(BabeltuneError) as info:
        load_config(path, list(overrides))
    return str(info.value).splitlines()


def train_cli(*args):
    from babeltune.trainer.cli import train

    return CliRunner().invoke(train, [str(a) for a in args])


# ------------------------------------------------------------------------------------ the loader (item 4)

def billion_laughs(levels: int) -> str:
    """The classic YAML bomb under backend.options: each level is ten aliases of the one below."""
    lines = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        lines.append(f"    l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return TINY_CPT.replace("backend:\n  name: hf-peft", "backend:\n  name: hf-peft\n  options:\n" + "\n".join(lines))


def test_a_yaml_bomb_is_refused_at_its_first_alias_in_one_line(tmp_path):
    # 5 levels = 10^6 leaves (enough to see the expansion; the reported bomb had 9 and took 3 GB)
    path = write(tmp_path, billion_laughs(5))
    started = time.perf_counter()
    lines = error_lines(path)
    assert time.perf_counter() - started < 2
    line_of_first_alias = TINY_CPT.count("\n", 0, TINY_CPT.index("backend:")) + 5
    assert lines == [f"{path}: line {line_of_first_alias}, column 14: YAML aliases (*name) are not allowed in a config; "
                     "write the value out"]


def test_train_dry_run_with_a_yaml_bomb_is_one_error_line_exit_2(tmp_path):
    path = write(tmp_path, billion_laughs(4))   # small enough that a regression fails instead of eating memory
    result = train_cli("--config", path, "--dry-run")
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines()] == [
        line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(result.stderr.splitlines()) == 1 and "aliases" in result.stderr


def test_an_alias_in_a_set_override_is_refused_too(tmp_path):
    path = write(tmp_path, TINY_CPT)
    with pytest.raises(BabeltuneError, match=r"^--set backend.options: line 1, column 16: YAML aliases"):
        load_config(path, ["backend.options={a: &a [1], b: *a}"])
    # text that is not YAML at all still stays text (and the schema says what is wrong with it)
    assert apply_overrides({}, ["model.name=a: b: c"]) == {"model": {"name": "a: b: c"}}


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, TINY_CPT + "#" * MAX_CONFIG_BYTES + "\n")
    assert error_lines(path) == [f"{path}: larger than 1024 KiB; a config (advise writes ~5 KB) cannot be this big: "
                                 "is it the right file?"]


@pytest.mark.parametrize("fragment, expected", [
    ("[" * 5000, "nested deeper than 32 levels"),                        # was a RecursionError traceback
    ("9" * 5000, "unreadable value (Exceeds the limit (4300 digits) for integer string conversion)"),
    ("2024-13-45", "unreadable value (month must be in 1..12)"),          # was a ValueError traceback
], ids=["5000 brackets", "5000-digit integer", "impossible date"])
def test_values_python_cannot_build_are_one_line(tmp_path, fragment, expected):
    path = write(tmp_path, TINY_CPT.replace("seed: 1234", f"seed: {fragment}"))
    lines = error_lines(path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ") and expected in lines[0], lines


# ------------------------------------------------------------------------------------ ranges (item 12)

@pytest.mark.parametrize("section, key, value, expected", [
    ("training", "num_train_epochs", ".inf", "finite number"),
    ("training", "num_train_epochs", "1.0e+300", "less than or equal to 10000"),
    ("training", "seed", "-1", "greater than or equal to 0"),
    ("training", "seed", "1.0e+18", f"less than or equal to {MAX_SEED}"),
    ("training", "seed", "4294967296", f"less than or equal to {MAX_SEED}"),
    ("adapter", "lora_alpha", ".inf", "finite number"),
    ("adapter", "lora_alpha", ".nan", "finite number"),
    ("model", "max_seq_length", "1048576", f"less than or equal to {MAX_SEQ_LENGTH}"),
    ("training", "per_device_train_batch_size", "1000000000000", "less than or equal to 65536"),
    ("training", "max_steps", "1000000000000000000000000000000", "less than or equal to 2147483647"),
    ("training", "max_grad_norm", ".inf", "finite number"),
    ("eval", "early_stopping_threshold", ".inf", "finite number"),
    ("training", "output_dir", '"runs/a\\0b"', "NUL character"),
    ("data", "train", '"corpus\\ud800.txt"', "lone surrogate"),
])
def test_values_that_crashed_after_loading_are_refused_up_front(tmp_path, section, key, value, expected):
    data = valid()
    data[section][key] = "__VALUE__"
    if key == "num_train_epochs":
        data["training"].pop("max_steps")
    path = write(tmp_path, yaml.safe_dump(data).replace("__VALUE__", value))
    lines = error_lines(path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {section}.{key}: ") and expected in lines[0], lines


def test_every_range_problem_is_reported_at_once(tmp_path):
    data = valid()
    data["training"].update(seed=-1, max_steps=None, num_train_epochs=math.inf)
    data["adapter"]["lora_alpha"] = math.inf
    data["model"]["max_seq_length"] = 1_048_576
    lines = error_lines(write(tmp_path, yaml.safe_dump(data)))
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == ["adapter.lora_alpha", "model.max_seq_length", "training.num_train_epochs", "training.seed"]


def test_the_seed_bounds_are_the_ones_numpy_takes():
    """transformers.set_seed seeds numpy: the schema's largest seed must work and the next one fail."""
    np.random.seed(MAX_SEED)
    with pytest.raises(ValueError):
        np.random.seed(MAX_SEED + 1)
    with pytest.raises(ValueError):
        np.random.seed(-1)


def test_every_number_in_the_schema_is_bounded_and_finite():
    """A new int field without an upper bound, or a float field that takes inf, fails here."""
    def numeric_fields(model: type[BaseModel], prefix=""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from numeric_fields(annotation, f"{prefix}{name}.")
                continue
            kinds = set(typing.get_args(annotation)) or {annotation}
            if int in kinds or float in kinds:
                yield f"{prefix}{name}", field, model

    checked = 0
    for key, field, model in numeric_fields(TrainConfig):
        bounds = [getattr(m, "le", None) or getattr(m, "lt", None) for m in field.metadata]
        if key == "schema_version":
            continue
        kinds = set(typing.get_args(field.annotation)) or {field.annotation}
        if float in kinds:
            assert model.model_config.get("allow_inf_nan") is False, key
        else:
            assert any(b is not None and b <= 2 ** 32 for b in bounds), f"{key} has no upper bound"
        checked += 1
    assert checked >= 25


def test_max_seq_length_beyond_the_models_position_embeddings(tmp_path, tiny_model_dir):
    import json

    limit = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    data = valid()
    data["model"].update(name=str(tiny_model_dir), max_seq_length=limit + 1)
    with pytest.raises(BabeltuneError) as info:
        validate_config(data, source="c.yaml")
    assert str(info.value) == (f"c.yaml: model.max_seq_length: {limit + 1} is more than {tiny_model_dir}'s "
                               f"max_position_embeddings ({limit}); set at most {limit}")
    data["model"]["max_seq_length"] = limit
    assert validate_config(data).model.max_seq_length == limit


def test_the_context_check_reads_gguf_and_builtins_without_converting(tmp_path):
    from babeltune.models.builtins import BUILTINS, installed_builtins
    from babeltune.models.facts import context_length

    assert context_length(str(tmp_path / "missing")) is None and context_length("not-a-model") is None
    if "smollm2-135m" not in installed_builtins():
        pytest.skip("smollm2-135m not installed")
    assert "smollm2-135m" in BUILTINS and context_length("smollm2-135m") == 8192   # its GGUF header
    data = valid()
    data["model"].update(name="smollm2-135m", max_seq_length=1_000_000 // 100)
    with pytest.raises(BabeltuneError, match="max_position_embeddings \\(8192\\)"):
        validate_config(data)
