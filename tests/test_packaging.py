"""The package layout: the design card's top-level folders import as babeltune.* however babeltune was installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.slow   # pip wheel
def test_wheel_holds_the_mapped_folders_and_their_data(tmp_path):
    """A plain (non-editable) install: the wheel maps advisor/, trainer/, plugins/, lang_profiles/ and src/babeltune
    under babeltune/, with the data files the code reads, and nothing else from the checkout."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("babeltune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ["babeltune/config.py", "babeltune/trainer/cli.py", "babeltune/advisor/rules/__init__.py",
                     "babeltune/plugins/__init__.py", "babeltune/models/builtins.py", "babeltune/corpus/reader.py",
                     "babeltune/languages/profiles.py",
                     "babeltune/lang_profiles/mr.yaml", "babeltune/advisor/data/throughput.json"]:
        assert expected in names, expected
    tops = {name.split("/")[0] for name in names}
    assert all(top == "babeltune" or top.startswith("babeltune-") for top in tops), tops
    assert not any(name.startswith(("babeltune/bench/", "babeltune/tests/", "babeltune/src/")) for name in names)


def test_no_generic_top_level_names_are_packaged():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert all(name == "babeltune" or name.startswith("babeltune.") for name in packages)
