"""The plugin manager: built-in backends (ordinary plugins listed in BUILTIN_PLUGINS) plus third-party
packages registered under the ``babeltune`` entry-point group. ``BABELTUNE_PLUGINS`` (a comma list of
plugin names; empty or unset = all) limits which plugins load. The core's own fallback policy
(``babeltune.trainer.fallback_policy``) is a plugin too, always loaded, that answers last."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from typing import Callable, Optional

import pluggy

from babeltune.errors import BabeltuneError
from babeltune.trainer import distributed, fallback_policy, hookspecs
from babeltune.trainer.backend import Backend, Kernels

KERNELS: tuple[Kernels, ...] = ("plain", "liger", "unsloth")

ENTRY_POINT_GROUP = "babeltune"
ENV_VAR = "BABELTUNE_PLUGINS"
# plugin name -> module; each module has `@hookimpl def register_backends(register)`.
BUILTIN_PLUGINS = {"hf-peft": "babeltune.plugins.hf_peft", "ia3": "babeltune.plugins.ia3",
                   "unsloth": "babeltune.plugins.unsloth"}
CORE_PLUGIN = "babeltune"   # the core's hook implementations (the fallback policy), loaded whatever the selection

_cache: dict[Optional[frozenset], tuple[pluggy.PluginManager, dict[str, Backend]]] = {}


def canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def wanted_plugins() -> Optional[frozenset[str]]:
    """Plugin names from BABELTUNE_PLUGINS, or None for all."""
    raw = os.environ.get(ENV_VAR, "")
    names = frozenset(canonical(part) for part in raw.split(",") if part.strip())
    return names or None


def _entry_point_names() -> list[str]:
    return [canonical(ep.name) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def _register_plugins(pm: pluggy.PluginManager, wanted: Optional[frozenset[str]]) -> None:
    if wanted is not None:
        known = set(BUILTIN_PLUGINS) | set(_entry_point_names())
        unknown = sorted(wanted - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BabeltuneError(f"{ENV_VAR}: unknown plugin {unknown[0]!r}{hint}; known: {', '.join(sorted(known))}")
    pm.register(fallback_policy, name=CORE_PLUGIN)
    for name, module in BUILTIN_PLUGINS.items():
        if wanted is None or name in wanted:
            _guarded(name, lambda: pm.register(importlib.import_module(module), name=name))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if canonical(ep.name) in BUILTIN_PLUGINS or canonical(ep.name) == CORE_PLUGIN:
            raise BabeltuneError(f"plugin {ep.name}: the entry point {ep.value!r} takes the name of a built-in "
                                 "plugin; rename it in its [project.entry-points.babeltune] table")
        if (wanted is None or canonical(ep.name) in wanted) and not pm.has_plugin(ep.name):
            _guarded(ep.name, lambda: pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name))
    _guarded("?", pm.check_pending, pm)


def _guarded(plugin: str, action: Callable, pm: Optional[pluggy.PluginManager] = None) -> None:
    """Turn a plugin's import or validation failure into one line naming the plugin and the fix."""
    try:
        action()
    except pluggy.PluginValidationError as exc:
        who = getattr(exc, "plugin", None)
        name = plugin if plugin != "?" else (pm.get_name(who) if pm and who is not None else None) or str(who)
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        message = message.split(" in plugin <")[0]  # the module repr repeats what `name` says
        raise BabeltuneError(f"plugin {name}: {message}; babeltune's hooks are {', '.join(_hook_names())} "
                             "(fix the name or arguments, or mark an extra hook optionalhook)") from None
    except (ImportError, SyntaxError, AttributeError) as exc:
        raise BabeltuneError(f"plugin {plugin}: could not be imported ({type(exc).__name__}: {exc}); reinstall it, or leave it out "
                             f"with {ENV_VAR}") from None


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "babeltune_spec"))


def _collect_backends(pm: pluggy.PluginManager) -> dict[str, Backend]:
    backends: dict[str, Backend] = {}

    def register(backend: Backend) -> None:
        if not isinstance(backend, Backend) or not backend.name:
            raise BabeltuneError(f"register_backends: {backend!r} is not a named babeltune.trainer.backend.Backend")
        _check_declarations(backend, _current_plugin[0])
        if backend.name in backends:
            raise BabeltuneError(f"register_backends: two plugins register a backend named {backend.name!r}; "
                                 f"uninstall one or limit plugins with {ENV_VAR}")
        backends[backend.name] = backend
        backend.plugin_name = _current_plugin[0]  # type: ignore[attr-defined]

    _current_plugin = [""]
    for name, plugin in pm.list_name_plugin():
        caller = pm.subset_hook_caller("register_backends", remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
        _current_plugin[0] = name
        caller(register=register)
    return backends


def _check_declarations(backend: Backend, plugin: str) -> None:
    """A backend's Options must reject unknown keys (that is how typos in backend.options are caught) and
    its kernels must be one the memory model knows."""
    from pydantic import BaseModel

    options = getattr(backend, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)) or options.model_config.get("extra") != "forbid":
        raise BabeltuneError(f"plugin {plugin}: backend {backend.name}'s Options must be a pydantic model with "
                             "model_config = ConfigDict(extra='forbid') (see docs/writing-a-backend.md)")
    if backend.kernels not in KERNELS:
        raise BabeltuneError(f"plugin {plugin}: backend {backend.name}'s kernels {backend.kernels!r} is not one of "
                             f"{', '.join(KERNELS)}")


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager for the current BABELTUNE_PLUGINS setting (built once per setting)."""
    return _load()[0]


def _load() -> tuple[pluggy.PluginManager, dict[str, Backend]]:
    wanted = wanted_plugins()
    if wanted not in _cache:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _register_plugins(pm, wanted)
        _cache[wanted] = (pm, _collect_backends(pm))
    return _cache[wanted]


def reset_plugin_manager() -> None:
    """Forget loaded plugins (tests; after installing a plugin in-process)."""
    _cache.clear()


def available_backends() -> dict[str, Backend]:
    """Every registered backend by name (usable here or not: see ``Backend.availability()``)."""
    return dict(_load()[1])


def select_backend(name: str, echo: Callable[[str], None] = print) -> Backend:
    """The backend called ``name``; when it cannot run here, the one the resolve_backend_fallback hook
    names (default hf-peft), after saying in one line what runs instead and why."""
    pm, backends = _load()
    if name not in backends:
        raise BabeltuneError(_unknown_backend_message(name, backends))
    backend = backends[name]
    usable, reason = backend.availability()
    if usable and distributed.world_size() > 1 and not getattr(backend, "supports_distributed", True):
        usable, reason = False, "its release does not support multi-GPU data parallel training"
    if usable:
        backend.prepare_process()
        return backend
    fallback = pm.hook.resolve_backend_fallback(name=name, reason=reason)
    if fallback is None:
        raise BabeltuneError(f"backend {name}: {reason}; no loaded plugin names a fallback: pick another with --backend")
    if fallback == name or fallback not in backends:
        raise BabeltuneError(f"backend {name}: {reason}; no usable fallback ({fallback!r} is "
                             f"{'the same backend' if fallback == name else 'not loaded'}): pick another with --backend")
    fallback_ok, fallback_reason = backends[fallback].availability()
    if not fallback_ok:
        raise BabeltuneError(f"backend {name}: {reason}; fallback {fallback} cannot run either: {fallback_reason}")
    echo(f"backend {name} is not usable here: {reason}; running {fallback} instead")
    backends[fallback].prepare_process()
    return backends[fallback]


def options_model(name: Optional[str]):
    """The Options model of the backend called ``name`` (None for a name that is not text: the config's own
    validation reports it). An unknown name raises BabeltuneError, which the config loader reports with the
    file's other problems."""
    if not isinstance(name, str):
        return None
    backends = available_backends()
    if name not in backends:
        raise BabeltuneError(_unknown_backend_message(name, backends))
    return backends[name].Options


def kernels_for(name: str) -> tuple[Kernels, Optional[str]]:
    """The kernels `train --backend name` would run with on this machine (its fallback's when it cannot
    run here), and a note when that is the fallback's. Unlike ``select_backend`` this prepares nothing."""
    pm, backends = _load()
    if name not in backends:
        raise BabeltuneError(_unknown_backend_message(name, backends).replace("backend.name:", "--backend:", 1))
    usable, reason = backends[name].availability()
    if usable:
        return backends[name].kernels, None
    fallback = pm.hook.resolve_backend_fallback(name=name, reason=reason)
    kernels = backends[fallback].kernels if fallback in backends else "plain"
    return kernels, (f"backend {name} is not usable here ({reason}): memory sized for {fallback}'s "
                     f"{kernels} kernels, which `train` would run instead")


def describe_options(name: str) -> list[dict]:
    """One entry per option of backend ``name``: key, type, default and description."""
    _, backends = _load()
    if name not in backends:
        raise BabeltuneError(_unknown_backend_message(name, backends).replace("backend.name:", "--options:", 1))
    return [{"key": key, "type": type_label(field.annotation), "default": field.get_default(call_default_factory=True),
             "description": field.description or ""}
            for key, field in backends[name].Options.model_fields.items()]


def type_label(annotation) -> str:
    """A YAML reader's name for a type: bool -> boolean, Optional[list[str]] -> 'list of text | null'."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join("true" if a is True else "false" if a is False else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {type_label(args[0]) if args else 'values'}"
    if origin is dict:
        return f"mapping of {type_label(args[0])} to {type_label(args[1])}" if args else "mapping"
    names = {bool: "boolean", int: "integer", float: "number", str: "text", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _unknown_backend_message(name: str, backends: dict[str, Backend]) -> str:
    close = difflib.get_close_matches(name, list(backends), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    limited = f"; {ENV_VAR}={os.environ[ENV_VAR]!r} limits which plugins load" if wanted_plugins() else ""
    return f"backend.name: unknown backend {name!r}{hint}; available: {', '.join(sorted(backends)) or 'none'}{limited}"


def plugin_descriptions() -> list[dict]:
    """One entry per loaded plugin: name, package, version, hooks and the backends it provides."""
    pm, backends = _load()
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    from babeltune import __version__

    entries = []
    for name, plugin in pm.list_name_plugin():
        dist = distributions.get(id(plugin))
        provided = [b for b in backends.values() if getattr(b, "plugin_name", None) == name]
        entries.append({
            "name": name,
            "package": dist.project_name if dist else "babeltune",
            "version": dist.version if dist else __version__,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or []),
            "backends": [_backend_entry(b) for b in provided],
        })
    return entries


def _backend_entry(backend: Backend) -> dict:
    usable, reason = backend.availability()
    return {"name": backend.name, "description": backend.description, "available": usable, "reason": reason or None}
