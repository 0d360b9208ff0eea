"""Hook specifications for babeltune plugins (pluggy).

A plugin is any module or object with functions decorated by ``babeltune.trainer.hookspecs.hookimpl``.
Built-in backends are ordinary plugins listed in ``babeltune.trainer.plugins.BUILTIN_PLUGINS``;
third-party packages register through the ``babeltune`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from babeltune.config import TrainConfig
    from babeltune.trainer.backend import Backend

PROJECT = "babeltune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: "Callable[[Backend], None]") -> None:
    """Called once when the plugin manager starts. Call ``register(backend)`` for each training
    backend the plugin provides (a ``babeltune.trainer.backend.Backend`` instance). Every
    implementation runs; nothing is returned. Two backends with one name are an error."""


@hookspec
def extra_callbacks(config: "TrainConfig") -> "list[Any]":
    """Called by `train` before the loop starts. Return a list of ``transformers.TrainerCallback``
    objects to add to the run (or an empty list). Results from every plugin are concatenated."""


@hookspec(firstresult=True)
def resolve_backend_fallback(name: str, reason: str) -> "str | None":
    """Called when the requested backend is not usable on this machine (``reason`` says why).
    Return the name of the backend to run instead; the first non-None result wins. The core's own
    policy (``babeltune.trainer.fallback_policy``: hf-peft) answers last."""
