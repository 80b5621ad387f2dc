"""The plugin manager: finds plugins through entry points and collects what they register.

Loading is lazy and idempotent: nothing is imported until a backend is looked up
or ``load_plugins()`` is called. Built-in backends are an ordinary plugin
(``promptbake.builtin``) declared in promptbake's own entry points, so they go
through the same path as third-party distributions.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateBackendError, PromptbakeError

GROUP = "promptbake"
BUILTIN_MODULE = "promptbake.builtin"
KINDS = ("teacher", "student", "loss", "probe", "exporter")
_HOOKS = {"teacher": "register_teachers", "student": "register_students", "loss": "register_losses",
          "probe": "register_probes", "exporter": "register_exporters"}

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)

_loaded = False
_registry: dict[str, dict[str, Entry]] | None = None


@dataclass
class Entry:
    """One registered backend: where it comes from and how to build it."""

    kind: str
    name: str
    target: Any  # a class, or "module:attr" imported on first use
    plugin: str
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _allowlist() -> set[str] | None:
    # Read at load time, not import time, so tests and CLIs can set it late.
    raw = os.environ.get("PROMPTBAKE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def load_plugins() -> None:
    """Register the built-in plugin and every allowed entry-point plugin, once.

    ``PROMPTBAKE_LOAD_PLUGINS`` is a comma-separated allowlist of entry-point or
    distribution names for third-party plugins; an empty value loads none. The
    built-ins are always loaded.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    allow = _allowlist()
    builtin_found = False
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        if ep.value == BUILTIN_MODULE:
            if builtin_found or pm.has_plugin(ep.name):
                continue  # the same checkout installed twice (editable + path)
            builtin_found = True
        elif allow is not None and ep.name not in allow and dist not in allow:
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            pm.load_setuptools_entrypoints(GROUP, name=ep.name)
        except Exception as exc:  # a broken plugin must say which one it is
            raise PromptbakeError(
                f"Error importing plugin '{ep.name}' ({dist or 'unknown distribution'}): {exc}"
            ) from exc
    if not builtin_found and not pm.has_plugin("builtin"):
        # Running from a source tree that was never pip-installed.
        pm.register(importlib.import_module(BUILTIN_MODULE), name="builtin")
    check_pending()


def check_pending() -> None:
    """Raise if a plugin implements a hook that does not exist (a misspelled name)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PromptbakeError(f"Plugin '{pm.get_name(exc.plugin)}': {exc}") from exc


def _collect() -> dict[str, dict[str, Entry]]:
    registry: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, _HOOKS[kind])
        # Call each implementation separately so every entry knows its plugin.
        for impl in reversed(hook.get_hookimpls()):
            plugin = impl.plugin_name

            def register(name: str, target: Any, aliases: tuple[str, ...] | list[str] = (),
                         _kind: str = kind, _plugin: str = plugin) -> None:
                table = registry[_kind]
                entry = Entry(_kind, name, target, _plugin, tuple(aliases))
                for key in (name, *entry.aliases):
                    if key in table:
                        raise DuplicateBackendError(
                            f"The {_kind} name '{key}' is registered by both plugin "
                            f"'{table[key].plugin}' and plugin '{_plugin}'; uninstall or "
                            f"block one of them (PROMPTBAKE_LOAD_PLUGINS)."
                        )
                    table[key] = entry

            impl.function(register=register)
    return registry


def registry() -> dict[str, dict[str, Entry]]:
    """All registered backends by kind, then by name or alias."""
    global _registry
    load_plugins()
    if _registry is None:
        _registry = _collect()
    return _registry


def reset() -> None:
    """Forget collected registrations (call after registering or removing a plugin)."""
    global _registry
    _registry = None


@contextmanager
def temporary_plugin(plugin: object, name: str) -> Iterator[object]:
    """Register ``plugin`` under ``name`` for the duration of a ``with`` block (tests)."""
    load_plugins()
    if pm.is_registered(plugin):  # already loaded from its entry point
        yield plugin
        return
    pm.register(plugin, name=name)
    reset()
    try:
        yield plugin
    finally:
        pm.unregister(name=name)
        reset()


def describe() -> list[dict[str, Any]]:
    """What ``promptbake plugins`` prints: each plugin, its version and what it registers."""
    table = registry()
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    out = []
    for plugin_name, plugin in pm.list_name_plugin():
        dist = dists.get(id(plugin))
        item: dict[str, Any] = {
            "name": plugin_name,
            "distribution": dist.project_name if dist else None,
            "version": dist.version if dist else None,
        }
        for kind in KINDS:
            names = sorted({e.name for e in table[kind].values() if e.plugin == plugin_name})
            if names:
                item[kind + ("es" if kind == "loss" else "s")] = names
        out.append(item)
    return out
