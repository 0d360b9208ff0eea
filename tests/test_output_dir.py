"""One run per output directory: a lock naming its holder (stale locks taken over), and a fresh run never
writes over an earlier run's outputs unless --overwrite says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babeltune.errors import BabeltuneError

from conftest import DATA, TEXT, tiny_config

CONFIG = DATA / "configs" / "tiny-cpt.yaml"
LOCK_FILE = ".babeltune.lock"


def short_config(model_dir: Path, out: Path, *extra: str):
    return tiny_config("tiny-cpt.yaml", model_dir, out, "eval.evaluation_strategy=no", "training.max_steps=2", *extra)


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


HOLD_LOCK = """
import sys, time
from babeltune.trainer.output_dir import RunLock
with RunLock(sys.argv[1], echo=print):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.slow   # a lock-holding process and a second train process
def test_a_second_train_on_the_same_output_dir_gets_one_error_naming_the_holder(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        second = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(CONFIG), "--output-dir",
                                 str(out), "--max-steps", "2", "--no-eval", "--set", f"model.name={tiny_model_dir}",
                                 "--set", f"data.train={TEXT / 'mr.txt'}", "--set", "eval.evaluation_strategy=no"],
                                env=env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"PID {holder.pid}" in errors[0] and "in use by another train process" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]            # it wrote nothing


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.kill()                                   # kill -9: the lock file stays, naming a dead PID
    holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    lines: list[str] = []
    result = run_training(short_config(tiny_model_dir, out), evaluate=False, echo=lines.append)
    assert result.steps == 2
    taken = [line for line in lines if line.startswith("lock: taking over the stale lock")]
    assert len(taken) == 1 and f"PID {holder.pid}" in taken[0] and "no longer running" in taken[0]
    assert not (out / LOCK_FILE).exists()           # released at the end


def test_the_lock_is_held_during_the_run_and_released_after_an_error(tiny_model_dir, tmp_path):
    from babeltune.trainer import output_dir
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    seen = []

    def look(line):
        if line.startswith("data:") and not seen:
            seen.append(json.loads((out / LOCK_FILE).read_text()))
            with pytest.raises(BabeltuneError, match=f"in use by another train process \\(PID {os.getpid()} on host"):
                output_dir.RunLock(out).acquire()
            raise BabeltuneError("stop here")

    with pytest.raises(BabeltuneError, match="stop here"):
        run_training(short_config(tiny_model_dir, out), evaluate=False, echo=look)
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["started"]
    assert not out.exists()                         # created by the run, left as it was found


def finished_outputs(out: Path) -> None:
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"earlier run")
    (out / "manifest.json").write_text('{"earlier": true}')
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')


def test_a_fresh_run_refuses_an_output_dir_holding_an_earlier_runs_outputs(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    finished_outputs(out)
    with pytest.raises(BabeltuneError) as caught:
        run_training(short_config(tiny_model_dir, out), evaluate=False, echo=lambda _l: None)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "--overwrite" in message and "--output-dir" in message
    assert "adapter/" in message and "manifest.json" in message
    assert (out / "manifest.json").read_text() == '{"earlier": true}'       # untouched
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "manifest.json", "metrics.jsonl"]


def test_overwrite_replaces_the_earlier_run_and_leaves_other_files(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    finished_outputs(out)
    (out / "checkpoint-7").mkdir()
    (out / "notes.txt").write_text("mine")
    lines: list[str] = []
    result = run_training(short_config(tiny_model_dir, out), overwrite=True, evaluate=False, echo=lines.append)
    assert result.steps == 2 and not (out / "checkpoint-7").exists()
    assert (out / "notes.txt").read_text() == "mine"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2] and all(r["loss"] != 9.0 for r in metrics if "loss" in r)
    assert any("removing the earlier run's" in l for l in lines) and any("leaving notes.txt" in l for l in lines)
    with pytest.raises(BabeltuneError, match="--overwrite and --resume exclude each other"):
        run_training(short_config(tiny_model_dir, out), overwrite=True, resume=True, evaluate=False, echo=lambda _l: None)


def test_resuming_another_folders_checkpoint_into_a_used_output_dir_is_refused(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    source = tmp_path / "source"
    run_training(short_config(tiny_model_dir, source), evaluate=False, echo=lambda _l: None)
    out = tmp_path / "used"
    finished_outputs(out)
    (out / "checkpoint-20").mkdir()                  # another run's checkpoint, which rotation would delete
    with pytest.raises(BabeltuneError, match="already holds checkpoints from an earlier run"):
        run_training(short_config(tiny_model_dir, out), resume=str(source / "checkpoint-2"), evaluate=False,
                     echo=lambda _l: None)
    assert (out / "checkpoint-20").is_dir() and (out / "manifest.json").read_text() == '{"earlier": true}'
