"""The same end-to-end run on a GPU: bf16 autocast, device placement, the bf16 reload tolerance."""

from __future__ import annotations

import json
import math

import pytest

from babeltune.config import load_config

from conftest import DATA, TEXT

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("extra", [
    [],
    ["training.gradient_checkpointing=true", "adapter.modules_to_save=[embed_tokens, lm_head]",
     "adapter.embedding_learning_rate=1e-3", "adapter.use_rslora=true"],
])
def test_cpt_on_gpu_in_bf16(tiny_model_dir, tmp_path, extra):
    from babeltune.trainer.run import run_training

    out = tmp_path / "gpu"
    config = load_config(DATA / "configs" / "tiny-cpt.yaml", [
        f"model.name={tiny_model_dir}", f"training.output_dir={out}", f"data.train={TEXT / 'mr.txt'}",
        "model.attn_implementation=auto", *extra])
    lines: list[str] = []
    result = run_training(config, echo=lines.append)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"]["device"] == "cuda" and manifest["device"]["precision"] == "bf16"
    assert manifest["device"]["gpu"]
    assert result.steps == 12 and math.isfinite(result.final_loss)
    check = manifest["reload_check"]
    assert check["relative_diff"] <= check["tolerance"] or check["unexplained_share"] <= 0.25
    assert check["tensors_match"]   # the saved tensors and maths config are exactly the trained ones
    report = json.loads(result.eval_report.read_text())
    assert "mr" in json.dumps(report)
    print("\n".join(lines[-8:]))


def test_train_gpus_2_on_two_gpus_matches_one_gpu(tiny_model_dir, tmp_path):
    """`train --gpus 2` through the real CLI on two GPUs: same loss curve as one GPU with the same effective batch."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    runs = {}
    for name, extra in (("one", []), ("two", ["--gpus", "2"])):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "babeltune.trainer.cli", "--config", str(DATA / "configs" / "tiny-cpt.yaml"),
                        "--set", f"model.name={tiny_model_dir}", "--set", f"training.output_dir={out}",
                        "--set", f"data.train={TEXT / 'mr.txt'}", "--set", "training.gradient_accumulation_steps=2",
                        "--no-eval", *extra], check=True, cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"})
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name] = [r["loss"] for r in records if "loss" in r]
    assert runs["two"] == pytest.approx(runs["one"], abs=5e-3)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["device"]["world_size"] == 2
