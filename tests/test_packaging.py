"""The package layout: the design card's top-level folders import as babeltune.* however babeltune was installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Drops the editable install's finder, as in a plain `pip install .`, then imports from the checkout's root,
# where `python -m babeltune` / `python -m pytest` find the checkout's babeltune/ folder first.
WITHOUT_EDITABLE_FINDER = """
import sys
sys.meta_path = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
import babeltune.advisor.rules, babeltune.trainer.cli, babeltune.plugins, babeltune.lang_profiles, babeltune.config
print(babeltune.trainer.cli.__file__)
print(babeltune.config.__file__)
"""


def test_checkout_root_imports_the_mapped_folders_without_an_editable_install():
    result = subprocess.run([sys.executable, "-c", WITHOUT_EDITABLE_FINDER], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cli_file, config_file = result.stdout.split()
    assert Path(cli_file) == ROOT / "trainer" / "cli.py"
    assert Path(config_file) == ROOT / "babeltune" / "config.py"


def test_no_generic_top_level_names_are_packaged():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(name == "babeltune" or name.startswith("babeltune.") for name in packages)
