"""Former name of :mod:`babeltune.plugins.toolkit`, kept because third-party backends were told to import
the shared helpers from here (docs/writing-a-backend.md before the rename). New code imports the toolkit."""

from babeltune.plugins.toolkit import *  # noqa: F401,F403
