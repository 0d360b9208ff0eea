"""`train`'s pipeline without a training loop: TrainingArguments built from the config (an argument the
installed transformers lacks is an error, never dropped) and the CLI flags as overrides of the one loader."""

from __future__ import annotations


import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer.backend import Runtime

from conftest import DATA

CONFIG = DATA / "configs" / "tiny-cpt.yaml"
CPU = Runtime(device="cpu", precision="fp32", model_dir="unused")


def test_training_arguments_carry_every_setting_and_the_runtime_accumulation(tmp_path):
    from babeltune.trainer.run import training_arguments

    config = load_config(CONFIG, ["training.gradient_accumulation_steps=4", "training.warmup_steps=0",
                                  "training.warmup_ratio=0.1"])
    args = training_arguments(config, CPU, tmp_path, has_eval=True)
    assert (args.gradient_accumulation_steps, args.learning_rate, args.max_steps) == (4, 0.005, 12)
    assert args.warmup_ratio == 0.1 if hasattr(args, "warmup_ratio") else args.warmup_steps == 0.1
    two_processes = Runtime(device="cpu", precision="fp32", model_dir="unused", world_size=2, gradient_accumulation_steps=2)
    assert training_arguments(config, two_processes, tmp_path, has_eval=True).gradient_accumulation_steps == 2


def test_an_argument_transformers_lacks_fails_loudly(tmp_path):
    from babeltune.trainer.run import training_arguments

    config = load_config(CONFIG)
    with pytest.raises(BabeltuneError, match=r"transformers \S+: TrainingArguments takes no not_an_argument, "
                                             r"which this run sets") as error:
        training_arguments(config, CPU, tmp_path, has_eval=True, extra={"not_an_argument": 1})
    assert len(str(error.value).splitlines()) == 1


def test_train_flags_are_overrides_of_the_one_loader_and_the_backend_name_travels_once(monkeypatch, tmp_path):
    """--backend/--output-dir/--max-steps land in the config the loader validates (backend.options is checked
    against the flag's backend), and run_training gets the backend only inside the config."""
    from click.testing import CliRunner
    from types import SimpleNamespace

    from babeltune.trainer import cli, run

    calls: list = []
    monkeypatch.setattr(run, "run_training", lambda config, **kwargs: calls.append((config, kwargs))
                        or SimpleNamespace(final_loss=None, steps=0, adapter_dir="unused"))
    result = CliRunner().invoke(cli.train, ["--config", str(CONFIG), "--backend", "ia3", "--max-steps", "3",
                                            "--output-dir", str(tmp_path / "out"), "--no-eval"])
    assert result.exit_code == 0, result.output
    config, kwargs = calls[0]
    assert "backend" not in kwargs and config.backend.name == "ia3"
    assert (config.training.max_steps, config.training.output_dir) == (3, str(tmp_path / "out"))

    said: list[str] = []
    with pytest.raises(BabeltuneError, match=r"backend\.options\.bitfit: unknown key for backend hf-peft"):
        cli.load_train_config(str(CONFIG), ("backend.options.bitfit=false",), backend=None, output_dir=None,
                              max_steps=None, echo=said.append)
    ia3 = cli.load_train_config(str(CONFIG), ("backend.options.bitfit=false",), backend="ia3", output_dir=None,
                                max_steps=None, echo=said.append)
    assert (ia3.backend.name, ia3.backend.options) == ("ia3", {"bitfit": False})
    epochs = cli.load_train_config(str(CONFIG), ("training.max_steps=null", "training.num_train_epochs=2"),
                                   backend=None, output_dir=None, max_steps=5, echo=said.append)
    assert (epochs.training.max_steps, epochs.training.num_train_epochs) == (5, None)
    assert said == ["--max-steps 5 replaces training.num_train_epochs (2)"]
