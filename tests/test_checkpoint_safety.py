"""Checkpoints stay resumable whatever happens while they are written: rotation never deletes the last complete
checkpoint before its successor is complete, and a damaged newest checkpoint is detected before resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.trainer import checkpoints
from babeltune.trainer.checkpoints import MARKER, last_complete_checkpoint

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"


class Killed(BaseException):
    """Stands for the process dying at this point (nothing after it runs)."""


def base_sets(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.name={model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
            "eval.evaluation_strategy=no", *extra]


@pytest.mark.slow   # ~24 s in the fast lane (over ~10 s: slow)
def test_rotation_keeps_the_last_complete_checkpoint_until_its_successor_is_complete(tiny_model_dir, tmp_path, monkeypatch):
    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    sets = base_sets(tiny_model_dir, out, "training.save_total_limit=1")
    real_write_marker = checkpoints.write_marker

    def die_before_the_second_marker(folder, step, *args, **kwargs):
        if step == 8:
            raise Killed()          # checkpoint-8's files are written, its marker is not
        return real_write_marker(folder, step, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "write_marker", die_before_the_second_marker)
    with pytest.raises(Killed):
        run_training(load_config(CONFIG, sets), evaluate=False, echo=lambda _l: None)
    monkeypatch.setattr(checkpoints, "write_marker", real_write_marker)
    assert last_complete_checkpoint(out) == out / "checkpoint-4"

    lines: list[str] = []
    result = run_training(load_config(CONFIG, sets), resume=True, evaluate=False, echo=lines.append)
    assert result.resumed_from == out / "checkpoint-4" and result.steps == 12
    assert any("skipping incomplete checkpoint-8" in line for line in lines)
    # the limit still holds once the newer checkpoint is complete
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12"]


@pytest.mark.slow   # ~15 s in the fast lane (over ~10 s: slow)
def test_resuming_from_the_final_checkpoint_trains_no_extra_step_and_keeps_it(tiny_model_dir, tmp_path):
    """A run killed after its last checkpoint (e.g. while writing the adapter) resumes to the output phase only:
    transformers alone would train a step past max_steps and, with save_total_limit 1, replace checkpoint-12."""
    import shutil

    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    sets = base_sets(tiny_model_dir, out, "training.save_total_limit=1")
    run_training(load_config(CONFIG, sets), evaluate=False, echo=lambda _l: None)
    shutil.rmtree(out / "adapter")
    marker = (out / "checkpoint-12" / MARKER).read_bytes()
    losses_before = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    result = run_training(load_config(CONFIG, sets), resume=True, evaluate=False, echo=lambda _l: None)
    assert result.steps == 12 and result.resumed_from == out / "checkpoint-12"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12"]
    assert (out / "checkpoint-12" / MARKER).read_bytes() == marker        # not re-saved
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    losses_after = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in losses_after] == [r["step"] for r in losses_before] == list(range(1, 13))


def test_rotation_keeps_the_newest_complete_the_best_and_drops_leftovers(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False), (8, True), (10, False), (12, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / MARKER).write_text("{}")
    # checkpoint-8 was just completed by a run resumed from checkpoint-4: 10 and 12 predate the resume point
    removed = checkpoints.rotate_checkpoints(tmp_path, keep=1, current_step=8, protect=tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-8"]
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-12", "checkpoint-4", "checkpoint-6"]
    checkpoints.rotate_checkpoints(tmp_path, keep=3, current_step=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-8"]


# ---------------------------------------------------------------------------------------------
# A damaged newest checkpoint is detected before resuming


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 12-step run with checkpoints 4, 8, 12 (read-only: copy to damage)."""
    from babeltune.trainer.run import run_training

    out = tmp_path_factory.mktemp("finished") / "run"
    run_training(load_config(CONFIG, base_sets(tiny_model_dir, out)), evaluate=False, echo=lambda _l: None)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "adapter_model.safetensors": lambda p: truncate(p),
    "optimizer.pt": lambda p: truncate(p),
    "scheduler.pt": lambda p: truncate(p, 0.9),
    "trainer_state.json": lambda p: p.write_text('{"global_step": 12, "log_history": ['),
    "rng_state.pth": lambda p: p.write_bytes(b""),
    MARKER: lambda p: p.write_text('{"step": 12, "trainable'),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_resume_falls_back_from_a_damaged_newest_checkpoint(finished_run, tmp_path, name):
    import shutil

    from babeltune.errors import BabeltuneError
    from babeltune.trainer.checkpoints import resolve_resume

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    DAMAGE[name](out / "checkpoint-12" / name)
    lines: list[str] = []
    assert resolve_resume(True, out, lines.append) == out / "checkpoint-8"
    assert any("checkpoint-12" in line and name in line for line in lines), lines
    with pytest.raises(BabeltuneError, match=rf"checkpoint-12.*{name}.*checkpoint-8"):
        resolve_resume(str(out / "checkpoint-12"), out)


def test_a_damaged_checkpoint_resumes_from_the_previous_one_end_to_end(tiny_model_dir, finished_run, tmp_path):
    import shutil

    from babeltune.trainer.run import run_training

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.rmtree(out / "adapter")
    truncate(out / "checkpoint-12" / "optimizer.pt")
    lines: list[str] = []
    result = run_training(load_config(CONFIG, base_sets(tiny_model_dir, out)), resume=True, evaluate=False,
                          echo=lines.append)
    assert result.resumed_from == out / "checkpoint-8" and result.steps == 12
    assert checkpoints.checkpoint_problem(out / "checkpoint-12") is None     # saved again, whole this time
    expected = [r["loss"] for r in map(json.loads, (finished_run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    got = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert got == pytest.approx(expected, abs=1e-4)
