"""Ctrl-C / SIGTERM during training: the current step finishes, a complete checkpoint is saved at that step
boundary, `train` exits non-zero with the exact command that resumes; a second Ctrl-C aborts at once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer.checkpoints import MARKER, checkpoint_problem

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"


def sets_for(model_dir: Path, out: Path) -> list[str]:
    # no periodic checkpoint before the end: an interruption would lose everything without the signal handling
    return [f"model.name={model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
            "eval.evaluation_strategy=no", "training.save_steps=1000"]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def signal_at(step_line: str, *signums: int):
    """An echo that sends signals to this process when the progress line for a step is printed."""
    def echo(line: str) -> None:
        if line.startswith(step_line):
            for signum in signums:
                os.kill(os.getpid(), signum)
    return echo


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> Path:
    from babeltune.trainer.run import run_training

    out = tmp_path_factory.mktemp("straight") / "run"
    run_training(load_config(CONFIG, sets_for(tiny_model_dir, out)), evaluate=False, echo=lambda _l: None)
    return out


@pytest.mark.slow   # ~19 s in the fast lane (over ~10 s: slow)
def test_ctrl_c_saves_a_checkpoint_at_the_step_boundary_then_resume_matches(tiny_model_dir, uninterrupted, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    config = load_config(CONFIG, sets_for(tiny_model_dir, out))
    with pytest.raises(BabeltuneError) as caught:
        run_training(config, evaluate=False, echo=signal_at("step 3/", signal.SIGINT), resume_command="train --resume")
    message = str(caught.value)
    assert caught.value.exit_code == 130 and len(message.splitlines()) == 1
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1 and (saved[0] / MARKER).is_file() and checkpoint_problem(saved[0]) is None
    step = int(saved[0].name.split("-")[1])
    assert 3 <= step < 12 and f"interrupted by Ctrl-C after step {step}/12" in message
    assert f"saved checkpoint {saved[0]}" in message and message.endswith("resume with: train --resume")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # handlers restored

    result = run_training(config, resume=True, evaluate=False, echo=lambda _l: None)
    assert result.steps == 12 and result.resumed_from == saved[0]
    assert losses(out) == pytest.approx(losses(uninterrupted), abs=1e-5)


def test_a_second_ctrl_c_aborts_at_once(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    with pytest.raises(BabeltuneError, match="interrupted twice: aborted at once, before any complete checkpoint") as caught:
        run_training(load_config(CONFIG, sets_for(tiny_model_dir, out)), evaluate=False,
                     echo=signal_at("step 3/", signal.SIGINT, signal.SIGINT))
    assert caught.value.exit_code == 130
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps[-1] <= 3 and not list(out.glob("checkpoint-*"))          # no further step, no save


def test_the_resume_command_repeats_the_invocation_with_resume():
    from babeltune.trainer import cli

    ctx = cli.train.make_context("train", ["--config", "my run.yaml", "--output-dir", "out", "--max-steps", "5",
                                           "--set", "training.seed=3", "--overwrite", "--no-eval"])
    assert cli.resume_command(ctx) == ("train --config 'my run.yaml' --output-dir out --max-steps 5 --resume "
                                       "--set training.seed=3 --no-eval")


@pytest.mark.slow
def test_sigterm_on_the_train_command_then_its_resume_command(tiny_model_dir, uninterrupted, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "babeltune.trainer.cli", "--config", str(CONFIG), "--no-eval"]
    for item in sets_for(tiny_model_dir, out):
        command += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").is_file() and '"step": 2' in (out / "metrics.jsonl").read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "training never reached step 2"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM after step" in errors[0], stderr[-2000:]
    resume = shlex.split(errors[0].split("resume with: ", 1)[1])
    assert resume[:3] == [sys.executable, "-m", "babeltune.trainer.cli"] and "--resume" in resume
    finished = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert losses(out)[-1] == pytest.approx(losses(uninterrupted)[-1], abs=1e-3) and len(losses(out)) == 12
