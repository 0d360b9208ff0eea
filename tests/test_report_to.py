"""training.report_to: passed through to the HF Trainer (none by default), checked when the config loads (an
integration that is unknown or not installed is one error line with the fix); metrics.jsonl and loss.png stay."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def config_with(tmp_path: Path, *sets: str, model: str = "tiny-llama-fixture"):
    return load_config(CONFIG, [f"model.name={model}", f"training.output_dir={tmp_path / 'run'}",
                                f"data.train={TEXT / 'mr.txt'}", *sets])


def missing_integration() -> str:
    """An integration transformers knows that is not installed here (tensorboard when it is missing)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    if not HAS_TENSORBOARD and "tensorboard" not in available:
        return "tensorboard"
    return next(name for name in ("flyte", "dvclive", "swanlab", "clearml", *INTEGRATION_TO_CALLBACK) if name not in available)


def test_default_is_none_and_reaches_the_trainer_as_no_integration(tmp_path):
    from babeltune.trainer.backend import Runtime
    from babeltune.trainer.run import training_arguments

    config = config_with(tmp_path)
    assert config.training.report_to == "none"
    args = training_arguments(config, Runtime(device="cpu", precision="fp32", model_dir="."), tmp_path / "run", has_eval=False)
    assert args.report_to in ([], ["none"], "none")


def test_named_integrations_pass_through_to_the_training_arguments(tmp_path, monkeypatch):
    import transformers.integrations.integration_utils as integrations

    from babeltune.trainer.backend import Runtime
    from babeltune.trainer.run import training_arguments

    # as if tensorboard and wandb were installed: the config check asks transformers what is available
    monkeypatch.setattr(integrations, "get_available_reporting_integrations", lambda: ["tensorboard", "wandb"])
    config = config_with(tmp_path, "training.report_to=[tensorboard, wandb]")
    assert config.training.report_to == ["tensorboard", "wandb"]
    args = training_arguments(config, Runtime(device="cpu", precision="fp32", model_dir="."), tmp_path / "run", has_eval=False)
    assert args.report_to == ["tensorboard", "wandb"]
    assert config_with(tmp_path, "training.report_to=wandb").training.report_to == ["wandb"]   # one name as a string


def test_an_integration_that_is_not_installed_is_one_line_naming_it_and_the_pip_fix(tmp_path):
    name = missing_integration()
    with pytest.raises(BabeltuneError) as caught:
        config_with(tmp_path, f"training.report_to=[{name}]")
    assert len(caught.value.lines) == 1
    line = caught.value.lines[0]
    assert f"training.report_to: {name} is not installed" in line and "pip install " in line


def test_an_unknown_integration_gets_a_did_you_mean(tmp_path):
    with pytest.raises(BabeltuneError) as caught:
        config_with(tmp_path, "training.report_to=[tensorbord]")
    assert len(caught.value.lines) == 1
    assert "'tensorbord' is not an integration" in caught.value.lines[0] and "did you mean 'tensorboard'" in caught.value.lines[0]


def test_a_bad_value_is_a_schema_error(tmp_path):
    with pytest.raises(BabeltuneError, match=r"training\.report_to: expected none or a list"):
        config_with(tmp_path, "training.report_to=[3]")


def test_train_cli_refuses_a_missing_integration_with_one_line_and_exit_2(tmp_path, tiny_model_dir):
    name = missing_integration()
    result = subprocess.run([sys.executable, "-m", "babeltune", "train", "--config", str(CONFIG),
                             "--set", f"model.name={tiny_model_dir}", "--set", f"training.output_dir={tmp_path / 'run'}",
                             "--set", f"data.train={TEXT / 'mr.txt'}", "--set", f"training.report_to=[{name}]"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and "pip install" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_gets_event_files_and_metrics_jsonl_and_loss_png_stay(tmp_path, tiny_model_dir):
    from babeltune.trainer.run import run_training

    config = config_with(tmp_path, "training.report_to=[tensorboard]", "training.max_steps=4",
                         "eval.eval_steps=2", model=str(tiny_model_dir))
    run_training(config, evaluate=False, echo=lambda _line: None)
    out = tmp_path / "run"
    assert list(out.rglob("events.out.tfevents.*")), "no tensorboard event file written"
    assert (out / "metrics.jsonl").read_text().count('"loss"') >= 4
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
