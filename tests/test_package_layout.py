"""The checkout imports the installed package: no second copy of a module, no repository folders as subpackages.

Before src/ layout, babeltune/__init__.py appended the repository root to babeltune.__path__, so
`babeltune.babeltune.errors` was a second copy of the error module (its BabeltuneError a different class) and
`babeltune.bench` / `babeltune.tests` were importable.
"""

import importlib
import importlib.util
from pathlib import Path

import pytest

import babeltune

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["babeltune.babeltune", "babeltune.bench", "babeltune.tests", "babeltune.src"])
def test_repository_folders_are_not_subpackages(name):
    assert importlib.util.find_spec(name) is None


def test_babeltune_path_is_one_folder():
    assert len(list(babeltune.__path__)) == 1
    assert Path(next(iter(babeltune.__path__))).resolve() == (ROOT / "src" / "babeltune").resolve()


@pytest.mark.parametrize("sub, folder", [("advisor", "advisor"), ("trainer", "trainer"), ("plugins", "plugins"),
                                         ("lang_profiles", "lang_profiles"), ("models", "src/babeltune/models"),
                                         ("corpus", "src/babeltune/corpus"), ("languages", "src/babeltune/languages")])
def test_design_card_folders_map_under_babeltune(sub, folder):
    module = importlib.import_module(f"babeltune.{sub}")
    assert Path(module.__file__).resolve().parent == (ROOT / folder).resolve()


def test_error_class_is_one_class():
    from babeltune.errors import BabeltuneError
    from babeltune.advisor import advise  # noqa: F401  (imports errors through the package)
    import sys
    copies = [m for m in sys.modules if m.endswith(".errors") and m.startswith("babeltune")]
    assert copies == ["babeltune.errors"], copies
    assert sys.modules["babeltune.errors"].BabeltuneError is BabeltuneError
