"""Fault suite: a `train` process killed at any point of writing checkpoints (files cut short, marker missing,
rotation half done, or kill -9 after a random delay) always leaves a complete checkpoint, and `train --resume`
then finishes with the loss of the uninterrupted run. Every save rotates (save_steps 1, save_total_limit 1),
the case where a kill used to leave nothing resumable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babeltune.trainer.checkpoints import MARKER, checkpoint_problem, newest_usable

from conftest import TEXT
from test_resume import CONFIG, env, final_logged_loss

pytestmark = pytest.mark.slow      # ~15 processes; the in-process regression tests cover each fix in the fast lane

STEPS = 8

# Runs `train` after arranging for the process to die (os._exit, as kill -9: no cleanup) at the N-th call of a
# function of the save path, after doing part of that function's work.
FAULT_DRIVER = r"""
import os, sys
point, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = [0]

def due():
    calls[0] += 1
    return calls[0] == nth

def cut(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)

def die():
    os._exit(137)

if point == "adapter_weights":
    import peft.peft_model as pm
    real_weights = pm.safe_save_file
    def save_weights(tensors, filename, *a, **k):
        real_weights(tensors, filename, *a, **k)
        if due():
            cut(filename); die()
    pm.safe_save_file = save_weights
elif point == "torch_save":          # per checkpoint: training_args.bin, optimizer.pt, scheduler.pt, rng_state.pth
    import torch
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if due():
            cut(f); die()
    torch.save = save
elif point == "trainer_state":
    from transformers import TrainerState
    def save_to_json(self, path):
        if due():
            with open(path, "w") as handle:
                handle.write('{"global_step": ')
            die()
        real_state(self, path)
    real_state, TrainerState.save_to_json = TrainerState.save_to_json, save_to_json
elif point == "marker":              # every file saved, the completion marker not yet written
    from babeltune.trainer import checkpoints
    real_marker = checkpoints.write_marker
    def write_marker(*a, **k):
        if due():
            die()
        return real_marker(*a, **k)
    checkpoints.write_marker = write_marker
elif point == "rotation":            # deleting the previous checkpoint, half done
    from babeltune.trainer import checkpoints
    real_remove = checkpoints.remove_checkpoint
    def remove_checkpoint(path):
        if due():
            (path / "babeltune_complete.json").unlink(missing_ok=True)
            (path / "optimizer.pt").unlink(missing_ok=True)
            die()
        real_remove(path)
    checkpoints.remove_checkpoint = remove_checkpoint
from babeltune.trainer.cli import main
main(args)
"""


def train_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--output-dir", str(out), "--max-steps", str(STEPS), "--no-eval",
            "--set", f"model.name={model_dir}", "--set", f"data.train={TEXT / 'mr.txt'}",
            "--set", "eval.evaluation_strategy=no", "--set", "training.save_steps=1",
            "--set", "training.save_total_limit=1", *extra]


def train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", *args], env=env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> tuple[int, float]:
    out = tmp_path_factory.mktemp("reference") / "run"
    done = train(*train_args(tiny_model_dir, out))
    assert done.returncode == 0, done.stderr[-2000:]
    return final_logged_loss(out)


def resume_and_compare(model_dir: Path, out: Path, reference: tuple[int, float]) -> str:
    usable, damaged = newest_usable(out, echo=lambda _l: None)
    assert usable is not None and checkpoint_problem(usable) is None, damaged     # nothing lost
    resumed = train(*train_args(model_dir, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step, loss = final_logged_loss(out)
    assert step == reference[0] == STEPS and abs(loss - reference[1]) <= 1e-3, (loss, reference)
    return resumed.stderr


FAULTS = [("marker", 3), ("rotation", 2), ("adapter_weights", 3), ("torch_save", 10), ("trainer_state", 4)]


@pytest.mark.parametrize("point,nth", FAULTS, ids=[f"{p}-{n}" for p, n in FAULTS])
def test_a_kill_inside_a_save_leaves_a_complete_checkpoint_and_resume_reproduces(tiny_model_dir, reference, tmp_path,
                                                                                 point, nth):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", FAULT_DRIVER, point, str(nth), *train_args(tiny_model_dir, out)],
                            env=env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]      # the fault fired: the run did not finish
    assert not (out / "adapter").exists()
    said = resume_and_compare(tiny_model_dir, out, reference)
    assert "lock: taking over the stale lock" in said           # the killed run's lock file


def test_kill_9_after_random_delays_while_every_step_saves(tiny_model_dir, reference, tmp_path):
    delays = random.Random(17).sample([i / 20 for i in range(40)], 3)     # 0-2 s after the first checkpoint
    for attempt, delay in enumerate(delays):
        out = tmp_path / f"run{attempt}"
        process = subprocess.Popen([sys.executable, "-m", "babeltune.trainer.cli", *train_args(tiny_model_dir, out)],
                                   env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while not (out / "checkpoint-1" / MARKER).exists() and not list(out.glob("checkpoint-*/" + MARKER)):
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        resume_and_compare(tiny_model_dir, out, reference)
