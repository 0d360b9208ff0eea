"""`train --gpus N`: the torchrun launcher, batch bookkeeping and a real 2-process data-parallel run on CPU
(gloo), whose loss curve must equal the single-process run with the same effective batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from babeltune.config import load_config
from babeltune.errors import BabeltuneError
from babeltune.trainer import cli, distributed

from conftest import DATA, TEXT

CONFIGS = DATA / "configs"


def losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def train_args(model_dir, out, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "tiny-cpt.yaml"), "--set", f"model.name={model_dir}",
            "--set", f"training.output_dir={out}", "--set", f"data.train={TEXT / 'mr.txt'}",
            "--set", "training.gradient_accumulation_steps=2", "--no-eval", *extra]


def test_worker_args_rebuild_the_command_without_gpus():
    params = {"config_path": "a.yaml", "backend": "hf-peft", "output_dir": None, "max_steps": 5,
              "resume": cli.RESUME_LAST, "sets": ("training.seed=3",), "merge": True, "no_eval": False, "gpus": 2}
    assert cli.worker_args(params) == ["--config", "a.yaml", "--backend", "hf-peft", "--max-steps", "5", "--resume",
                                       "--set", "training.seed=3", "--merge"]
    command = distributed.torchrun_command(2, ["--config", "a.yaml"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in command
    assert command[-4:] == ["-m", "babeltune.trainer.cli", "--config", "a.yaml"]


def test_more_gpus_than_visible_is_a_one_line_error(tmp_path):
    with pytest.raises(BabeltuneError, match=r"--gpus: 4 GPUs requested, but 1 CUDA device\(s\) are visible; pass --gpus 1"):
        distributed.check_gpus(4, available=1)
    config = tmp_path / "c.yaml"
    shutil.copy(CONFIGS / "tiny-cpt.yaml", config)
    proc = subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(config), "--gpus", "64"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--gpus: 64 GPUs requested" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_accumulation_is_divided_to_keep_the_effective_batch():
    config = load_config(CONFIGS / "tiny-cpt.yaml", ["training.gradient_accumulation_steps=4"])
    lines = []
    assert distributed.accumulation_per_process(config, 2, lines.append) == 2
    assert "keeps the effective batch at 16 sequences" in lines[-1]
    assert distributed.accumulation_per_process(config, 3, lines.append) == 4
    assert "grows from 16 to 48" in lines[-1]
    assert distributed.accumulation_per_process(config, 1, lines.append) == 4 and len(lines) == 2


def test_resolved_config_of_a_two_process_run_is_the_users_config(tiny_run_config, monkeypatch):
    """The accumulation divided over the processes is a runtime setting: the config saved with the adapter and in
    the manifest is the one the user gave (running it again on one GPU must not halve the effective batch)."""
    from pathlib import Path

    import yaml

    from babeltune.trainer.run import run_training

    monkeypatch.setattr(distributed, "world_size", lambda: 2)   # what each torchrun worker of `train --gpus 2` sees
    config = tiny_run_config("training.gradient_accumulation_steps=2", "training.max_steps=2", "eval.evaluation_strategy=no")
    out = Path(config.training.output_dir)
    lines: list[str] = []
    run_training(config, evaluate=False, echo=lines.append)
    assert any("gradient_accumulation_steps 2 -> 1" in line for line in lines)
    saved = yaml.safe_load((out / "adapter" / "babeltune_config.yaml").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert saved == manifest["config"] == config.model_dump(mode="json")
    assert manifest["device"]["gradient_accumulation_steps_per_process"] == 1


@pytest.mark.slow   # two torchrun processes, twice
def test_two_process_run_matches_one_process_writes_once_and_resumes(tiny_model_dir, tmp_path):
    from babeltune.trainer.run import run_training

    single = tmp_path / "single"
    run_training(load_config(CONFIGS / "tiny-cpt.yaml", [f"model.name={tiny_model_dir}", f"training.output_dir={single}",
                                                         f"data.train={TEXT / 'mr.txt'}", "training.gradient_accumulation_steps=2"]),
                 evaluate=False, echo=lambda _line: None)
    ddp = tmp_path / "ddp"
    assert distributed.launch(2, train_args(tiny_model_dir, ddp), lambda _line: None) == 0
    assert losses(ddp) == pytest.approx(losses(single), abs=2e-3) and len(losses(ddp)) == 12
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert manifest["device"]["world_size"] == 2
    assert manifest["config"]["training"]["gradient_accumulation_steps"] == 2   # the user's config, as given
    assert manifest["device"]["gradient_accumulation_steps_per_process"] == 1   # 2 over 2 processes
    assert sorted(p.name for p in ddp.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]

    # interrupted after checkpoint-8: resume on 2 processes ends where the uninterrupted run ended
    shutil.rmtree(ddp / "checkpoint-12")
    for name in ("adapter", "manifest.json"):
        shutil.rmtree(ddp / name) if (ddp / name).is_dir() else (ddp / name).unlink()
    assert distributed.launch(2, train_args(tiny_model_dir, ddp, "--resume"), lambda _line: None) == 0
    assert losses(ddp) == pytest.approx(losses(single), abs=2e-3)
    assert json.loads((ddp / "manifest.json").read_text())["resumed_from"].endswith("checkpoint-8")


def test_single_process_with_several_gpus_trains_on_one(monkeypatch):
    from types import SimpleNamespace

    from babeltune.trainer.run import keep_to_one_gpu

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args, lines = SimpleNamespace(n_gpu=2, _n_gpu=2), []
    keep_to_one_gpu(args, lines.append)
    assert args._n_gpu == 1 and "train --gpus 2" in lines[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = SimpleNamespace(n_gpu=1, _n_gpu=1)
    keep_to_one_gpu(args, lines.append)
    assert args._n_gpu == 1 and len(lines) == 1


def test_fsdp_launch_is_detected_so_the_loader_leaves_the_model_on_cpu(monkeypatch):
    from babeltune.plugins.toolkit import fsdp_enabled

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not fsdp_enabled()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fsdp_enabled()
