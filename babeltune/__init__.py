"""babeltune: fine-tune LLMs for a specific language, with every hyperparameter measured and explained."""

__version__ = "0.1.0"


def _map_checkout_folders() -> None:
    """In a source checkout, find babeltune.advisor/.trainer/.plugins/.lang_profiles in their top-level folders.

    pyproject's package-dir maps those folders under `babeltune` at install time. Python run from the checkout's root
    (`python -m babeltune`, `python -m pytest`) imports this folder instead of the installed package; without this,
    its subpackages would be missing unless the install was editable.
    """
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "trainer")):
        __path__.append(root)  # after this folder's own entries: babeltune.config etc. still come from here


_map_checkout_folders()
