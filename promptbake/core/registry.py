"""Look up teachers, students and losses by name, with errors a user can act on."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from . import plugins
from .errors import ConfigError, MissingDependencyError, UnknownBackendError

# Import name -> pip name, where they differ.
_PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml"}


def entry(kind: str, name: str) -> plugins.Entry:
    """The registry entry for ``name``; raises UnknownBackendError with suggestions."""
    table = plugins.registry()[kind]
    try:
        return table[name]
    except KeyError:
        raise UnknownBackendError(kind, name, {e.name for e in table.values()}) from None


def resolve(kind: str, name: str) -> type:
    """The backend class for ``name``, importing it on first use."""
    item = entry(kind, name)
    target = item.target
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if not missing or missing == module_name.split(".")[0]:
                raise
            pip_name = _PIP_NAMES.get(missing, missing)
            raise MissingDependencyError(
                f"The {kind} '{name}' needs the Python package '{pip_name}', which is not "
                f"installed: pip install {pip_name}"
            ) from exc
        target = getattr(module, attr)
        item.target = target  # cache the import
    return target


def create(kind: str, spec: Any, **kwargs: Any) -> Any:
    """Build a backend from a name with its options, or return ``spec`` if it is already an instance.

    Options the backend does not take are refused in one sentence that lists those it takes.
    """
    if not isinstance(spec, str):
        return spec
    cls = resolve(kind, spec)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    if params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            takes = ", ".join(sorted(k for k, p in params.items()
                                     if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))) or "none"
            raise OptionError(kind, spec, unknown, takes)
    return cls(**kwargs)


class OptionError(ConfigError):
    """A backend given an option it does not take."""

    def __init__(self, kind: str, name: str, unknown: list[str], takes: str):
        self.unknown = unknown
        super().__init__(f"The {kind} '{name}' does not take the option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)}; it takes: {takes}.")


def names(kind: str) -> list[str]:
    """Registered primary names of one kind, sorted."""
    return sorted({e.name for e in plugins.registry()[kind].values()})
