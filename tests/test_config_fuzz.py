"""Fuzz the config loader (> 1,000 generated inputs in all): random bytes, random text, malformed YAML, wrong
types, unknown keys, bad --set overrides. Every input either loads or ends in a BabeltuneError whose lines
each name the file (or --set) — never another exception, never a traceback."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babeltune.config import TrainConfig, load_config
from babeltune.errors import BabeltuneError

from conftest import DATA

VALID = yaml.safe_load((DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8"))
def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
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
