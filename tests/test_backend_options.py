"""Typed backend options and kernels (issue 14, item 1; issue 17, item 4): every backend declares a pydantic
Options model (unknown keys rejected, a description per field) that `train` checks backend.options
against with the rest of the config, `babeltune plugins --options NAME` shows, and each backend says
which kernels it runs so `advise` sizes memory for the backend that will train."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from babeltune.config import validate_config
from babeltune.errors import BabeltuneError
from babeltune.trainer import plugins
from babeltune.trainer.backend import Backend

from conftest import DATA

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SRC = REPO / "examples" / "babeltune-backend-example" / "src"
TINY_CPT = (DATA / "configs" / "tiny-cpt.yaml").read_text(encoding="utf-8")


def lora_plus_backend_class():
    sys.path.insert(0, str(EXAMPLE_SRC))
    try:
        from babeltune_lora_plus.plugin import LoraPlusBackend
    finally:
        sys.path.remove(str(EXAMPLE_SRC))
    return LoraPlusBackend


def every_backend() -> dict[str, Backend]:
    found = dict(plugins.available_backends())
    found["lora-plus"] = lora_plus_backend_class()()
    return found


def train_dry_run(tmp_path, *sets, backend=None):
    from babeltune.trainer.cli import train

    path = tmp_path / "c.yaml"
    path.write_text(TINY_CPT, encoding="utf-8")
    args = ["--config", str(path), "--dry-run", *[arg for item in sets for arg in ("--set", item)]]
    args += ["--backend", backend] if backend else []
    return path, CliRunner().invoke(train, args)


# ------------------------------------------------------------------------------------------ declarations

@pytest.mark.parametrize("name", ["hf-peft", "ia3", "unsloth", "lora-plus"])
def test_each_backend_declares_strict_described_options_and_its_kernels(name):
    backend = every_backend()[name]
    options = type(backend).Options
    assert issubclass(options, BaseModel) and options.model_config.get("extra") == "forbid"
    for key, field in options.model_fields.items():
        assert field.description and len(field.description) > 20, f"{name}: backend.options.{key} has no description"
    assert backend.kernels in ("plain", "liger", "unsloth")
    options.model_validate({})      # every option has a default


def test_the_options_each_backend_takes():
    fields = {name: sorted(type(b).Options.model_fields) for name, b in every_backend().items()}
    assert fields == {"hf-peft": ["liger"], "ia3": ["bitfit", "feedforward_modules", "liger", "target_modules"],
                      "unsloth": [], "lora-plus": ["liger", "loraplus_lr_ratio"]}


def test_registration_refuses_options_that_let_unknown_keys_through():
    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")

    class LooseBackend(Backend):
        name, Options = "loose", Loose

        def load(self, config, runtime):
            raise NotImplementedError

    with pytest.raises(BabeltuneError, match="plugin someone: backend loose's Options must be a pydantic model with "
                                             "model_config = ConfigDict\\(extra='forbid'\\)"):
        plugins._check_declarations(LooseBackend(), "someone")
    LooseBackend.Options, LooseBackend.kernels = Backend.Options, "fused"
    with pytest.raises(BabeltuneError, match="kernels 'fused' is not one of plain, liger, unsloth"):
        plugins._check_declarations(LooseBackend(), "someone")


# ------------------------------------------------------------------------------------------ validation

def test_a_misspelt_option_is_one_line_with_a_did_you_mean(tmp_path):
    path, result = train_dry_run(tmp_path, "backend.options.lgier=false")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: {path}: backend.options.lgier: unknown key for backend hf-peft; did you mean 'liger'?"]


def test_option_problems_come_with_the_other_config_problems_at_once(tmp_path):
    path, result = train_dry_run(tmp_path, "backend.options.bitfit=maybe", "backend.options.target_modules=[]",
                                 "backend.options.colour=blue", "training.seed=-1", backend="ia3")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {path}: training.seed: Input should be greater than or equal to 0 (got -1)"
    assert f"error: {path}: backend.options.bitfit: Input should be a valid boolean, unable to interpret input (got 'maybe')" in lines
    assert any(line.startswith(f"error: {path}: backend.options.target_modules: List should have at least 1 item")
               for line in lines)
    assert (f"error: {path}: backend.options.colour: unknown key for backend ia3; known keys: liger, target_modules, "
            "feedforward_modules, bitfit") in lines
    assert len(lines) == 4


def test_a_backend_without_options_refuses_any(tmp_path):
    data = yaml.safe_load(TINY_CPT)
    data["backend"] = {"name": "unsloth", "options": {"max_seq_length": 4096}}
    with pytest.raises(BabeltuneError) as info:
        validate_config(data, source="c.yaml", options_model=plugins.options_model("unsloth"))
    assert str(info.value) == "c.yaml: backend.options.max_seq_length: unknown key for backend unsloth; backend unsloth takes no keys"


def test_valid_options_reach_the_backend_typed(tmp_path):
    path, result = train_dry_run(tmp_path, "backend.options.liger=false", "backend.options.bitfit=false", backend="ia3")
    assert result.exit_code == 0, result.output
    translated = yaml.safe_load(result.stdout.split("translate()")[1])
    assert translated["bitfit"] is False and translated["liger"] is False
    ia3 = plugins.available_backends()["ia3"]
    data = yaml.safe_load(TINY_CPT)
    data["backend"] = {"name": "ia3", "options": {"target_modules": ["k_proj", "fc2"], "feedforward_modules": ["fc2"]}}
    options = ia3.parse_options(validate_config(data))
    assert options.target_modules == ["k_proj", "fc2"] and options.bitfit is True and options.liger == "auto"


def test_the_example_plugins_ratio_is_a_bounded_typed_option():
    backend = lora_plus_backend_class()()
    data = yaml.safe_load(TINY_CPT)
    for bad, expected in ((0.5, "greater than or equal to 1"), (float("inf"), "finite number"), ("fast", "valid number")):
        data["backend"] = {"name": "lora-plus", "options": {"loraplus_lr_ratio": bad}}
        with pytest.raises(BabeltuneError, match=f"^backend.options.loraplus_lr_ratio: .*{expected}"):
            backend.parse_options(validate_config(data))
    data["backend"]["options"] = {"loraplus_lr_ratio": 8}
    assert backend.parse_options(validate_config(data)).loraplus_lr_ratio == 8.0


# ------------------------------------------------------------------------------------------ plugins --options

def test_plugins_options_prints_type_default_and_description():
    from babeltune.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--options", "ia3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "backend.options for backend ia3:"
    assert "  bitfit: boolean (default true)" in lines
    assert "  target_modules: list of text | null (default null)" in lines
    assert "  liger: 'auto' | true | false (default \"auto\")" in lines
    assert any("BitFit, Ben Zaken et al. 2022" in line for line in lines)
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--options", "hf-peft", "--json"]).stdout)
    assert data == {"backend": "hf-peft", "options": [{"key": "liger", "type": "'auto' | true | false", "default": "auto",
                                                       "description": type(plugins.available_backends()["hf-peft"]).Options.model_fields["liger"].description}]}
    none = CliRunner().invoke(cli, ["plugins", "--options", "unsloth"])
    assert none.exit_code == 0 and "backend unsloth takes no backend.options" in none.stdout
    unknown = CliRunner().invoke(cli, ["plugins", "--options", "ia33"])
    assert unknown.exit_code == 2
    assert unknown.stderr.splitlines() == ["error: --options: unknown backend 'ia33' (did you mean 'ia3'?); available: "
                                           "hf-peft, ia3, unsloth"]


# ------------------------------------------------------------------------------------------ kernels and advise

def fake_liger(monkeypatch, installed: bool, gpu: bool) -> None:
    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if installed else None) if name == "liger_kernel" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)


@pytest.mark.parametrize("installed, gpu, expected", [(False, False, "plain"), (False, True, "plain"),
                                                      (True, False, "plain"), (True, True, "liger")])
def test_hf_peft_kernels_are_liger_only_where_liger_can_run(monkeypatch, installed, gpu, expected):
    fake_liger(monkeypatch, installed, gpu)
    backends = plugins.available_backends()
    assert backends["hf-peft"].kernels == expected and backends["ia3"].kernels == expected
    assert backends["unsloth"].kernels == "unsloth"


def test_kernels_for_a_backend_that_cannot_run_here_are_its_fallbacks(monkeypatch):
    from babeltune.plugins import unsloth as unsloth_plugin

    fake_liger(monkeypatch, installed=False, gpu=False)
    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: False)
    kernels, note = plugins.kernels_for("unsloth")
    assert kernels == "plain"
    assert note == ("backend unsloth is not usable here (no NVIDIA GPU (torch.cuda.is_available() is False)): memory "
                    "sized for hf-peft's plain kernels, which `train` would run instead")
    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: True)
    monkeypatch.setattr(unsloth_plugin, "unsloth_installed", lambda: True)
    assert plugins.kernels_for("unsloth") == ("unsloth", None)
    with pytest.raises(BabeltuneError, match="^--backend: unknown backend 'unslot' \\(did you mean 'unsloth'\\?\\)"):
        plugins.kernels_for("unslot")


def test_the_rule_context_sizes_memory_for_the_backends_kernels(tiny_model_dir):
    from babeltune.advisor.memory import estimate_memory
    from babeltune.advisor.rules.context import RuleContext
    from babeltune.advisor.types import Decision
    from babeltune.models.facts import model_facts

    facts = model_facts(str(tiny_model_dir))
    decided = {"r": Decision(16, "test"), "target_modules": Decision(["q_proj", "v_proj"], "test"),
               "per_device_train_batch_size": Decision(4, "test"), "max_seq_length": Decision(1024, "test")}
    settings = dict(batch_size=4, seq_len=1024, lora_r=16, target_modules=["q_proj", "v_proj"], load_in_4bit=False,
                    gradient_checkpointing=True)
    estimates = {}
    for kernels in ("plain", "liger", "unsloth"):
        estimates[kernels] = RuleContext(measurements=None, facts=facts, kernels=kernels, decisions=dict(decided)).estimate()
        assert estimates[kernels].total_gib == pytest.approx(estimate_memory(facts, kernels=kernels, **settings).total_gib)
        assert estimates[kernels].inputs["kernels"] == kernels
    # fused linear cross-entropy keeps no full logits; the default stays the plain kernels advise used before
    assert estimates["liger"].parts["logits"] < estimates["plain"].parts["logits"]
    assert RuleContext(measurements=None, facts=facts, decisions=dict(decided)).estimate().inputs["kernels"] == "plain"


def test_advise_sizes_memory_for_the_backend_that_will_run(monkeypatch, tiny_model_dir):
    from babeltune.advisor.cli import advise
    from babeltune.plugins import unsloth as unsloth_plugin

    fake_liger(monkeypatch, installed=False, gpu=True)
    monkeypatch.setattr(unsloth_plugin, "cuda_available", lambda: True)
    monkeypatch.setattr(unsloth_plugin, "unsloth_installed", lambda: True)
    base = ["--lang", "mr", "--corpus", str(DATA / "text" / "mr.txt"), "--model", str(tiny_model_dir), "--json"]
    results = {}
    for backend in ("hf-peft", "unsloth"):
        result = CliRunner().invoke(advise, base + ["--backend", backend])
        assert result.exit_code == 0, result.output
        results[backend] = json.loads(result.stdout)
    assert results["hf-peft"]["memory"]["inputs"]["kernels"] == "plain"
    assert results["unsloth"]["memory"]["inputs"]["kernels"] == "unsloth"
    assert results["unsloth"]["config"]["backend"]["name"] == "unsloth"


def test_unknown_backend_in_the_config_is_a_line_naming_the_file_with_its_other_problems(tmp_path):
    # Found by tests/test_config_fuzz.py: `train` said "error: backend.name: unknown backend ..." without the
    # config file, and only after the rest of the file had been checked and passed.
    from click.testing import CliRunner

    import yaml

    from babeltune.trainer.cli import train
    from conftest import SMALL_CONFIG

    data = {key: dict(value) if isinstance(value, dict) else value for key, value in SMALL_CONFIG.items()}
    data["backend"] = {"name": "hf_peft"}
    data["training"]["learning_rate"] = -1                          # a second problem in the same file
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = CliRunner().invoke(train, ["--config", str(path), "--dry-run"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert f"error: {path}: backend.name: unknown backend 'hf_peft' (did you mean 'hf-peft'?); available: " in "\n".join(lines)
    assert len(lines) >= 2 and all(line.startswith(f"error: {path}: ") for line in lines), lines
