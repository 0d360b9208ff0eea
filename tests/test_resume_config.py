"""`--resume` continues the run the checkpoint was made by: a changed config that would alter training is
refused with the list of changes unless --allow-config-change is given (then recorded in the manifest);
changes that only affect outputs, logging or evaluation pass, take effect and are recorded too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError

from conftest import DATA, TEXT

CONFIG = DATA / "configs" / "tiny-cpt.yaml"


def sets_for(model_dir: Path, out: Path, corpus: Path, *extra: str) -> list[str]:
    return [f"model.name={model_dir}", f"training.output_dir={out}", f"data.train={corpus}",
            "eval.evaluation_strategy=no", *extra]


@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir, tmp_path_factory):
    """A 12-step run interrupted after checkpoint-8 (checkpoint-12 and the outputs removed); its own corpus copy."""
    from babeltune.trainer.run import run_training

    root = tmp_path_factory.mktemp("stopped")
    corpus = root / "mr.txt"
    shutil.copy(TEXT / "mr.txt", corpus)
    out = root / "run"
    run_training(load_config(CONFIG, sets_for(tiny_model_dir, out, corpus)), evaluate=False, echo=lambda _l: None)
    shutil.rmtree(out / "checkpoint-12")
    shutil.rmtree(out / "adapter")
    (out / "manifest.json").unlink()
    return root


def copy_of(stopped_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(stopped_run, tmp_path / "w")
    return tmp_path / "w" / "run", tmp_path / "w" / "mr.txt"


def test_resume_refuses_changed_training_values_and_lists_them(tiny_model_dir, stopped_run, tmp_path):
    from babeltune.trainer.run import run_training

    out, corpus = copy_of(stopped_run, tmp_path)
    changed = load_config(CONFIG, sets_for(tiny_model_dir, out, corpus, "training.learning_rate=0.001", "training.seed=7"))
    with pytest.raises(BabeltuneError) as caught:
        run_training(changed, resume=True, evaluate=False, echo=lambda _l: None)
    message = str(caught.value)
    assert "training.learning_rate: 0.005 -> 0.001" in message and "training.seed: 1234 -> 7" in message
    assert "--allow-config-change" in message and len(message.splitlines()) == 1
    assert not (out / "checkpoint-12").exists()                              # nothing ran

    lines: list[str] = []
    result = run_training(changed, resume=True, allow_config_change=True, evaluate=False, echo=lines.append)
    assert result.steps == 12 and any("training.learning_rate: 0.005 -> 0.001" in line for line in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["training"]["learning_rate"] == 0.001
    [change] = manifest["resume"]["config_changes"]
    assert change["at_step"] == 8 and change["allowed_by"] == "--allow-config-change"
    assert change["changes"]["training.learning_rate"] == [0.005, 0.001]
    # the next resume compares with what this run saved (the new values), and keeps the history
    marker = json.loads((out / "checkpoint-12" / "babeltune_complete.json").read_text())
    assert marker["config"]["training"]["seed"] == 7 and marker["config_changes"] == manifest["resume"]["config_changes"]


def test_resume_refuses_a_corpus_whose_contents_changed(tiny_model_dir, stopped_run, tmp_path):
    from babeltune.trainer.run import run_training

    out, corpus = copy_of(stopped_run, tmp_path)
    corpus.write_text(corpus.read_text(encoding="utf-8") + "नवीन ओळ\n", encoding="utf-8")
    with pytest.raises(BabeltuneError, match=r"data\.train \(contents\): sha256 [0-9a-f]{12} -> sha256 [0-9a-f]{12}"):
        run_training(load_config(CONFIG, sets_for(tiny_model_dir, out, corpus)), resume=True, evaluate=False,
                     echo=lambda _l: None)


def test_changes_that_do_not_alter_training_pass_take_effect_and_are_recorded(tiny_model_dir, stopped_run, tmp_path):
    from babeltune.trainer.run import run_training

    out, corpus = copy_of(stopped_run, tmp_path)
    moved = tmp_path / "elsewhere" / "mr.txt"
    moved.parent.mkdir()
    shutil.copy(corpus, moved)                                    # same file at another path
    lines: list[str] = []
    config = load_config(CONFIG, sets_for(tiny_model_dir, out, moved, "training.save_steps=2", "training.logging_steps=2"))
    result = run_training(config, resume=True, evaluate=False, echo=lines.append)
    assert result.steps == 12
    # the new save_steps ran (transformers alone keeps the checkpoint's save/logging steps on resume)
    assert (out / "checkpoint-10").is_dir()
    logged = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == list(range(1, 9)) + [10, 12]
    [change] = json.loads((out / "manifest.json").read_text())["resume"]["config_changes"]
    assert change["allowed_by"] is None and set(change["changes"]) == {"training.save_steps", "training.logging_steps",
                                                                   "data.train", "training.output_dir"}
    assert any("do not change training" in line and "training.save_steps: 4 -> 2" in line for line in lines)


def test_which_keys_may_change_on_resume():
    from babeltune.trainer.resume_config import compare_runs

    base = {"config": {"training": {"learning_rate": 0.1, "output_dir": "a", "max_steps": 10},
                       "eval": {"eval_steps": 5}, "data": {"train": "x.txt"}},
            "corpus_sha256": {"train": "aa" * 32, "eval": None}}
    now = json.loads(json.dumps(base))
    now["config"]["training"].update(output_dir="b", max_steps=20)
    now["config"]["eval"]["eval_steps"] = 2
    contract, free = compare_runs(base, now)
    assert contract == {"training.max_steps": (10, 20)}       # the learning-rate schedule depends on it
    assert free == {"training.output_dir": ("a", "b"), "eval.eval_steps": (5, 2)}
