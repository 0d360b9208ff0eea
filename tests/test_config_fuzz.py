"""Fuzz the config loader (> 1,000 generated inputs in all): random bytes, random text, malformed YAML, wrong
types, unknown keys, bad --set overrides. Every input either loads or ends in a BabeltuneError whose lines
each name the file (or --set) — never another exception, never a traceback."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babeltune.config import TrainConfig, load_config
from babeltune.errors import BabeltuneError

from conftest import DATA
from conftest import examples as lane_examples

VALID = yaml.safe_load((DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8"))
def fuzz(examples: int) -> settings:
    return settings(max_examples=lane_examples(examples), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KNOWN_KEYS = sorted({k for section in VALID.values() if isinstance(section, dict) for k in section} | set(VALID))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(KNOWN_KEYS),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


def attempt(path: Path, overrides=()) -> None:
    """Load; a failure must be a BabeltuneError whose every line is `<source>: ...`."""
    try:
        config = load_config(path, list(overrides))
    except BabeltuneError as exc:
        lines = str(exc).splitlines()
        assert lines, "empty error message"
        for line in lines:
            assert line.startswith(f"{path}: ") or line.startswith("--set "), line
            assert "Traceback" not in line and len(line) < 2000
        return
    assert isinstance(config, TrainConfig)


@fuzz(250)
@given(blob=st.binary(max_size=400))
def test_random_bytes(tmp_path, blob):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(blob)
    attempt(path)


@fuzz(250)
@given(text=st.text(alphabet=st.sampled_from(list("abc:-[]{}\"'#&*!|>%@`,? \t\n0123456789.ैमराठी\x00\x85\ufeff")), max_size=120))
def test_malformed_yaml_text(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    attempt(path)


mutation = st.tuples(
    st.sampled_from(["set", "delete", "unknown", "replace_section"]),
    st.sampled_from([k for k, v in VALID.items() if isinstance(v, dict)] + ["language", "schema_version"]),
    st.sampled_from(KNOWN_KEYS + ["zzz", "Train", "max_step"]),
    values,
)


def mutate(config: dict, changes) -> dict:
    data = copy.deepcopy(config)
    for kind, section, key, value in changes:
        target = data.get(section)
        if kind == "replace_section" or not isinstance(target, dict):
            data[section] = value
        elif kind == "set":
            target[key] = value
        elif kind == "delete":
            target.pop(key, None)
        else:
            target[key + "_x"] = value
    return data


@fuzz(400)
@given(changes=st.lists(mutation, min_size=1, max_size=4))
def test_wrong_types_unknown_keys_and_missing_keys(tmp_path, changes):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(mutate(VALID, changes), allow_unicode=True), encoding="utf-8")
    attempt(path)


@fuzz(150)
@given(overrides=st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["training.learning_rate", "adapter.r", "data", "model.name.x",
                                                         "eval.eval_steps", "x.y", "", "training"]),
              st.text(alphabet=st.sampled_from(list("0123456789.e-[]{}:,ab no")), max_size=12)),
), max_size=3))
def test_set_overrides(tmp_path, overrides):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    attempt(path, overrides)


def test_nan_and_infinite_numbers_are_rejected_cleanly(tmp_path):
    for key, value in [("learning_rate", math.nan), ("learning_rate", math.inf), ("max_grad_norm", -math.inf)]:
        data = copy.deepcopy(VALID)
        data["training"][key] = value
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            load_config(path)
        except BabeltuneError as exc:
            assert f"training.{key}" in str(exc)
        else:
            raise AssertionError(f"{key}={value} was accepted")


# ---------------------------------------------------------------------------------------------------------
# Every key, arbitrary YAML: a valid config that the code after loading can run, or one `error:` line per
# problem naming the key (or the line and column, for YAML the loader refuses), never a traceback.

from babeltune.config import MAX_YAML_DEPTH, describe_fields  # noqa: E402
from babeltune.errors import one_line  # noqa: E402
from babeltune.trainer import plugins  # noqa: E402

CONFIG_KEYS = sorted(describe_fields())
OPTION_KEYS = sorted((name, key) for name, backend in plugins.available_backends().items()
                     for key in type(backend).Options.model_fields)
# YAML the schema or the loader must turn away, or that is valid but easy to get wrong
RAW_FRAGMENTS = [
    ".inf", "-.inf", ".nan", "-1", "0", "1", "-0.0", "1e23", "1.0e+23", "1.0e+18", "4294967295", "4294967296",
    "2147483648", "99999999999999999999", "9" * 5000, "2024-13-45", "2024-01-01", "12:30:00", "yes", "off", "no",
    "~", "''", '"a\\0b"', '"\\ud800"', '"a\\nerror: forged"', '"\\x1b[2J"', "[]", "{}", "[1, [2, [3]]]",
    "{a: 1}", "[" * (MAX_YAML_DEPTH + 5) + "]" * (MAX_YAML_DEPTH + 5), "*a", "&a 1", "!!binary aGk=",
    "!!python/object/apply:os.system [echo]", "0x10", "0o17", "1_000", "1048576", "131072", "131073", "8", "7",
    "all-linear", "[q_proj, v_proj]", "[embed_tokens, lm_head]", "auto", "true", "false", "hf-peft", "ia3",
]


def flow(value) -> str:
    """A Python value as one line of YAML flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 9, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


fragments = st.one_of(st.sampled_from(RAW_FRAGMENTS), values.map(flow),
                      st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str),
                      st.floats(allow_nan=True, allow_infinity=True).map(flow))


def config_with(key: str, fragment: str, backend: str = "hf-peft") -> str:
    data = copy.deepcopy(VALID)
    data["backend"] = {"name": backend}
    parts = key.split(".")
    if len(parts) == 1:
        data[parts[0]] = "__FUZZ__"
    elif parts[:2] == ["backend", "options"] and len(parts) == 3:
        data["backend"]["options"] = {parts[2]: "__FUZZ__"}
    else:
        data.setdefault(parts[0], {})[parts[1]] = "__FUZZ__"
        if key == "training.num_train_epochs":
            data["training"].pop("max_steps")     # one of the two, or the fuzzed key is not what fails
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).replace("__FUZZ__", fragment)


def runs_after_loading(config: TrainConfig) -> None:
    """What the code after loading does with the values, without a model: seeding, paths, step and
    scale arithmetic, the resolved YAML and the backend's translation."""
    import numpy as np

    from babeltune.trainer.export import resolved_config_yaml

    np.random.seed(config.training.seed)                                     # transformers.set_seed
    for text in (config.model.name, config.model.tokenizer, config.data.train, config.data.eval,
                 config.training.output_dir, *config.eval.extra_corpora.values()):
        if text is not None:
            Path(text).exists()                                              # ValueError on NUL, surrogates
    if config.training.num_train_epochs is not None:
        assert math.ceil(config.training.num_train_epochs * 1000) > 0       # HF Trainer's max_steps
    assert math.isfinite(config.adapter.lora_alpha / math.sqrt(config.adapter.r))
    assert config.model.max_seq_length * config.training.per_device_train_batch_size < 2 ** 31
    assert validate_yaml_round_trip(resolved_config_yaml(config)) == config
    try:
        backend = plugins.select_backend(config.backend.name, echo=lambda line: None)
    except BabeltuneError as exc:     # what `train` shows for a backend name that is valid text but no backend
        assert exc.lines[0].startswith("backend.name: unknown backend") and len(exc.lines) == 1, exc.lines
        return
    backend.translate(config)


def validate_yaml_round_trip(text: str) -> TrainConfig:
    from babeltune.config import validate_config

    return validate_config(yaml.safe_load(text))


def check_key(path: Path, key: str, backend: str) -> None:
    try:
        config = load_config(path, options_model=plugins.options_model(backend))
    except BabeltuneError as exc:
        leaf = key.split(".")[-1]
        assert exc.lines, "empty error"
        for line in exc.lines:
            assert line.startswith(f"{path}: ") and line == one_line(line) and len(line) < 2000, line
        assert any(leaf in line for line in exc.lines) or (
            len(exc.lines) == 1 and re.search(r": line \d+, column \d+: ", exc.lines[0])), exc.lines
        return
    runs_after_loading(config)


@fuzz(300)
@given(key=st.sampled_from(CONFIG_KEYS), fragment=fragments)
def test_any_yaml_value_for_any_key_loads_and_runs_or_is_one_line_naming_it(tmp_path, key, fragment):
    path = tmp_path / "fuzz.yaml"
    path.write_text(config_with(key, fragment), encoding="utf-8")
    check_key(path, key, "hf-peft")


@fuzz(150)
@given(option=st.sampled_from(OPTION_KEYS + [("hf-peft", "lgier"), ("unsloth", "liger"), ("ia3", "bitfitt")]),
       fragment=fragments)
def test_any_yaml_value_for_any_backend_option(tmp_path, option, fragment):
    backend, key = option
    path = tmp_path / "fuzz.yaml"
    path.write_text(config_with(f"backend.options.{key}", fragment, backend), encoding="utf-8")
    check_key(path, f"backend.options.{key}", backend)


@fuzz(40)
@given(key=st.sampled_from(CONFIG_KEYS), fragment=fragments)
def test_train_prints_one_error_line_per_problem_and_exits_2(tmp_path, key, fragment):
    from click.testing import CliRunner

    from babeltune.trainer.cli import train

    path = tmp_path / "fuzz.yaml"
    path.write_text(config_with(key, fragment), encoding="utf-8")
    result = CliRunner().invoke(train, ["--config", str(path), "--dry-run"])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code != 0:
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert lines and all(line.startswith(f"error: {path}: ") for line in lines), lines
