"""The advised config is built once and written from that one TrainConfig: every rule is keyed by the config key it
sets, every key advise sets carries a reason, and the YAML loads back to the same config. Adding a config parameter
touches its field in babeltune.config, one rule keyed here by that field, and the rule's test; nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from babeltune.advisor.advise import advise, build_config, config_data, given_decisions
from babeltune.advisor.render import render_yaml
from babeltune.advisor.rules import RULE_ORDER, SHOWN_ONLY
from babeltune.advisor.types import Decision, Decisions
from babeltune.config import TrainConfig, describe_fields, parse_yaml, validate_config
from babeltune.corpus.reader import CorpusSpec
from babeltune.errors import BabeltuneError

MARATHI = Path(__file__).parent / "data" / "text" / "mr.txt"


def set_keys(config: TrainConfig) -> list[str]:
    """Dotted keys advise set in ``config`` (what the YAML holds)."""
    keys = []
    for section in config.model_fields_set:
        body = getattr(config, section)
        keys += [f"{section}.{key}" for key in body.model_fields_set] if hasattr(body, "model_fields_set") else [section]
    return keys


@pytest.fixture(scope="module")
def advice(tiny_model_dir):
    return advise("mr", CorpusSpec(str(MARATHI)), model=str(tiny_model_dir), gpu_memory=16, probe=False)


def test_every_rule_sets_a_field_of_the_schema():
    fields = set(describe_fields())
    keys = [key for key, _ in RULE_ORDER]
    assert len(keys) == len(set(keys))
    assert [key for key in keys if key not in fields and key not in SHOWN_ONLY] == []
    assert SHOWN_ONLY <= set(keys)                      # nothing listed there that no rule decides


def test_a_decision_is_read_by_its_keys_last_part_when_that_names_one_key():
    keys = [key for key, _ in RULE_ORDER]
    last_parts = [key.rpartition(".")[2] for key in keys]
    assert len(last_parts) == len(set(last_parts))      # what lets rules read ctx.value("learning_rate")
    decisions = Decisions({"training.learning_rate": Decision(1e-4, "x"), "batch_size": Decision(8, "y")})
    assert decisions["learning_rate"] is decisions["training.learning_rate"] and "learning_rate" in decisions
    decisions["learning_rate"] = Decision(2e-4, "z")    # replaces the keyed decision, adds no second one
    assert list(decisions) == ["training.learning_rate", "batch_size"] and decisions["training.learning_rate"].value == 2e-4
    assert "r" not in decisions and decisions.get("r") is None
    with pytest.raises(KeyError):
        decisions["r"]
    twice = Decisions({"model.name": Decision("a", ""), "backend.name": Decision("b", "")})
    with pytest.raises(KeyError, match="model.name, backend.name"):
        twice["name"]


def test_every_key_advise_sets_has_a_reason_from_one_decision(advice):
    keys = set_keys(advice.config)
    assert "training.learning_rate" in keys and "model.name" in keys
    for key in keys:
        decision = advice.decisions.get(key) if key in advice.decisions else advice.given.get(key)
        assert decision is not None and decision.reason, key
    decided = {key for key in advice.decisions if key not in SHOWN_ONLY}
    assert decided <= set(keys) and not decided & set(advice.given)   # one source per key


def test_the_yaml_is_the_built_config_with_each_reason_above_its_key(advice):
    text = render_yaml(advice, "advise --lang mr")
    assert validate_config(parse_yaml(text, "advised.yaml")) == advice.config     # loads back to the same config
    assert yaml.safe_load(text) == config_data(advice.config)
    lines, section, keyed = text.splitlines(), "", []
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#") or line.startswith("    "):
            continue                                    # blank, a comment, or a multi-line value's continuation
        if line.endswith(":"):
            section = line[:-1]
            continue
        key = line.split(":")[0].strip()
        dotted = f"{section}.{key}" if line.startswith("  ") else key
        reason = (advice.decisions.get(dotted) or advice.given[dotted]).reason
        assert lines[index - 1].strip() == f"# {reason}", dotted
        keyed.append(dotted)
    assert sorted(keyed) == sorted(set_keys(advice.config))
    # the schema takes one run length: the planned steps are written, the epochs only explained
    assert advice.config.training.num_train_epochs is None and advice.config.training.max_steps
    assert "epochs" in lines[lines.index("  num_train_epochs: null") - 1]


def test_a_rule_keyed_by_no_schema_field_fails_loudly(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("x\n", encoding="utf-8")
    given = given_decisions(language="mr", model="m", tokenizer=None, corpus=CorpusSpec(str(corpus)), goal="cpt")
    decisions = {"model.max_seq_length": Decision(64, "r"), "training.per_device_train_batch_size": Decision(1, "r"),
                 "training.learning_rate": Decision(1e-4, "r"), "training.max_steps": Decision(10, "r"),
                 "eval.evaluation_strategy": Decision("no", "r"), "training.learning_rat": Decision(1e-4, "typo")}
    with pytest.raises(BabeltuneError, match=r"training.learning_rat: unknown key; did you mean 'learning_rate'"):
        build_config(decisions, given)
    del decisions["training.learning_rat"]
    assert build_config(decisions, given).training.learning_rate == 1e-4
