"""The core's answer to ``resolve_backend_fallback``: a backend that cannot run here is replaced by hf-peft
(plain transformers + PEFT, which runs wherever torch does). Registered as the plugin ``babeltune`` with
``trylast``, so any installed plugin that answers wins; hf-peft itself has no fallback."""

from __future__ import annotations

from typing import Optional

from babeltune.trainer.hookspecs import hookimpl

FALLBACK_BACKEND = "hf-peft"


@hookimpl(trylast=True)
def resolve_backend_fallback(name: str, reason: str) -> Optional[str]:
    return None if name == FALLBACK_BACKEND else FALLBACK_BACKEND
