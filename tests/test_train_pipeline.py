"""`train`'s pipeline without a training loop: TrainingArguments built from the config (an argument the
installed transformers lacks is an error, never dropped) and the CLI flags as overrides of the one loader."""

from __future__ import annotations

from pathlib import Path

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
