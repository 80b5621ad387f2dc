"""Look up teachers, students and losses by name, with errors a user can act on."""

from __future__ import annotations

import importlib
from typing import Any

from . import plugins
from .errors import MissingDependencyError, UnknownBackendError

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
    """Build a backend from a name, or return ``spec`` if it is already an instance."""
    if not isinstance(spec, str):
        return spec
    return resolve(kind, spec)(**kwargs)


def names(kind: str) -> list[str]:
    """Registered primary names of one kind, sorted."""
    return sorted({e.name for e in plugins.registry()[kind].values()})
