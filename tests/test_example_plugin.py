"""The example third-party package (examples/babeltune-backend-example) installed with pip exactly as a
user would (into a temporary target folder, so the shared environment is untouched), found through
the real `babeltune` entry point, listed by `babeltune plugins`, and trained with `train`'s core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from babeltune.trainer import plugins

pytestmark = pytest.mark.slow   # pip installs the example package (the plugin machinery: test_plugins.py)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "babeltune-backend-example"
MARATHI = Path(__file__).parent / "data" / "text" / "mr.txt"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip install the example (no deps: babeltune is already here) into a fresh target folder."""
    work = tmp_path_factory.mktemp("example")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-cache-dir", "--target", str(target), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (target / "babeltune_lora_plus-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


@pytest.fixture
def on_path(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    plugins.reset_plugin_manager()
    yield installed_example
    plugins.reset_plugin_manager()
    for name in [m for m in sys.modules if m.startswith("babeltune_lora_plus")]:
        del sys.modules[name]


def test_listed_by_babeltune_plugins(on_path):
    from babeltune.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    entry = next(p for p in json.loads(result.output)["plugins"] if p["name"] == "lora-plus")
    assert (entry["package"], entry["version"], entry["module"]) == ("babeltune-lora-plus", "0.1.0",
                                                                     "babeltune_lora_plus.plugin")
    assert entry["hooks"] == ["register_backends"]
    assert entry["backends"] == [{"name": "lora-plus", "available": True, "reason": None,
                                  "description": entry["backends"][0]["description"]}]


def test_trains_through_the_core(on_path, tiny_model_dir, tmp_path):
    from babeltune.config import validate_config
    from babeltune.trainer.run import run_training

    config = validate_config({
        "language": "mr",
        "model": {"name": str(tiny_model_dir), "max_seq_length": 64},
        "data": {"train": str(MARATHI), "eval_fraction": 0.1},
        "adapter": {"r": 4, "lora_alpha": 8},
        "training": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "max_steps": 4, "logging_steps": 1, "save_steps": 100, "gradient_checkpointing": False},
        "eval": {"evaluation_strategy": "no"},
        "backend": {"name": "lora-plus", "options": {"loraplus_lr_ratio": 8}},
    })
    said: list[str] = []
    result = run_training(config, echo=said.append, evaluate=False)
    assert result.steps == 4 and result.final_loss is not None
    assert any("LoRA+: lora_B learns at 8x" in line for line in said)
    manifest = json.loads(Path(result.manifest).read_text(encoding="utf-8"))
    assert "lora-plus" in json.dumps(manifest)
    assert (result.adapter_dir / "adapter_config.json").is_file()


def test_package_own_tests_pass(installed_example):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1")
    env.pop(plugins.ENV_VAR, None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=installed_example.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
