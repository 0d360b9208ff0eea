"""Resume: kill -9 mid-run then `train --resume` reproduces the uninterrupted run; a checkpoint whose save was
interrupted (no completion marker) is never resumed from; a checkpoint for another adapter is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer.checkpoints import MARKER, last_complete_checkpoint, resolve_resume

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"
STEPS = 30


def train_command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "babeltune.trainer.cli", "--config", str(CONFIG), "--output-dir", str(out),
            "--max-steps", str(STEPS), "--no-eval", "--set", f"model.name={model_dir}",
            "--set", f"data.train={TEXT / 'mr.txt'}", "--set", "eval.evaluation_strategy=no", *extra]


def final_logged_loss(out: Path) -> tuple[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    return last["step"], last["loss"]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow   # three train processes, one killed with SIGKILL
def test_kill_9_then_resume_matches_the_uninterrupted_run(tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(train_command(tiny_model_dir, straight), env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_model_dir, killed), env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (killed / "checkpoint-8" / MARKER).exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint appeared"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter").exists() and not (killed / f"checkpoint-{STEPS}").exists()

    resumed = subprocess.run(train_command(tiny_model_dir, killed, "--resume"), env=env(), capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resume: from" in resumed.stderr
    step_a, loss_a = final_logged_loss(straight)
    step_b, loss_b = final_logged_loss(killed)
    assert step_a == step_b == STEPS
    assert abs(loss_a - loss_b) <= 1e-3, (loss_a, loss_b)
    steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == sorted(set(steps))          # re-trained steps replaced, not duplicated


def fake_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    """A checkpoint folder with whole files (complete) or a save cut short (incomplete: no marker)."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if not complete:
        (path / "adapter_model.safetensors").write_bytes(b"partial")
        return path
    save_file({"lora_A": torch.zeros(2, 2)}, str(path / "adapter_model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / MARKER).write_text(json.dumps({"step": step, "trainable_parameters": []}))
    return path


def test_resume_skips_a_checkpoint_whose_save_was_interrupted(tmp_path):
    good = fake_checkpoint(tmp_path, 4, True)
    fake_checkpoint(tmp_path, 8, False)            # killed during the save: files, but no marker
    lines: list[str] = []
    assert resolve_resume(True, tmp_path, lines.append) == good
    assert lines and "checkpoint-8" in lines[0] and "interrupted" in lines[0]
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == good     # a run folder as --resume PATH
    with pytest.raises(BabeltuneError, match="incomplete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-8"), tmp_path)
    with pytest.raises(BabeltuneError, match="no complete checkpoint"):
        resolve_resume(True, tmp_path / "empty")
    assert resolve_resume(None, tmp_path) is None


def test_interrupted_save_then_resume_trains_from_the_previous_complete_checkpoint(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    base = [f"model.name={tiny_model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
            "eval.evaluation_strategy=no"]
    run_training(load_config(CONFIG, base), evaluate=False, echo=lambda _l: None)
    # Simulate a kill in the middle of saving checkpoint-12: the marker (written last) is missing.
    (out / "checkpoint-12" / MARKER).unlink()
    (out / "checkpoint-12" / "optimizer.pt").write_bytes(b"torn")
    assert last_complete_checkpoint(out).name == "checkpoint-8"
    lines: list[str] = []
    result = run_training(load_config(CONFIG, base + ["training.max_steps=12"]), resume=True, evaluate=False,
                          echo=lines.append)
    assert result.resumed_from == out / "checkpoint-8" and result.steps == 12
    assert any("skipping incomplete checkpoint-12" in l for l in lines)
    assert (out / "checkpoint-12" / MARKER).is_file()                    # re-saved properly this time


def test_resume_refuses_a_checkpoint_made_for_another_adapter(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    base = [f"model.name={tiny_model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
            "eval.evaluation_strategy=no", "training.max_steps=4"]
    run_training(load_config(CONFIG, base), evaluate=False, echo=lambda _l: None)
    other = load_config(CONFIG, base + ["adapter.target_modules=[q_proj, v_proj]"])
    with pytest.raises(BabeltuneError, match="trainable parameters differ.*in the checkpoint but not in this adapter"):
        run_training(other, resume=True, evaluate=False, echo=lambda _l: None)
