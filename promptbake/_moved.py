"""Import paths of promptbake 0.1, kept working for one release: each warns and hands out the
module(s) where its names live now (docs/architecture.md has the new layout).

A plugin written against 0.1 (``from promptbake.scoring import sparse_targets``,
``from promptbake.students.peft import PeftStudent``) keeps working; promptbake's own code
never uses these paths (tests/test_architecture.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# old module -> the modules its names are in now (looked up in order)
MOVED: dict[str, tuple[str, ...]] = {
    "promptbake.types": ("promptbake.core.types",),
    "promptbake.interfaces": ("promptbake.core.interfaces",),
    "promptbake.config": ("promptbake.core.config",),
    "promptbake.errors": ("promptbake.core.errors",),
    "promptbake.hookspecs": ("promptbake.core.hookspecs",),
    "promptbake.plugins": ("promptbake.core.plugins",),
    "promptbake.registry": ("promptbake.core.registry",),
    "promptbake.capabilities": ("promptbake.core.capabilities",),
    "promptbake.batching": ("promptbake.core.batching",),
    "promptbake.progress": ("promptbake.core.progress",),
    "promptbake.chunked_head": ("promptbake.core.chunked",),
    "promptbake.probes": ("promptbake.core.probes", "promptbake.builtin.probes"),
    "promptbake.queries": ("promptbake.stages.queries",),
    "promptbake.render": ("promptbake.stages.render", "promptbake.core.tokenizers"),
    "promptbake.generation": ("promptbake.stages.generate", "promptbake.run.chunks"),
    "promptbake.onpolicy": ("promptbake.stages.onpolicy",),
    "promptbake.evaluate": ("promptbake.stages.evaluate.heldout",),
    "promptbake.behaviour": ("promptbake.stages.evaluate.behaviour",),
    "promptbake.fidelity": ("promptbake.stages.evaluate", "promptbake.reevaluate"),
    "promptbake.report": ("promptbake.stages.report",),
    "promptbake.rundir": ("promptbake.run.rundir", "promptbake.core.atomic"),
    "promptbake.cache": ("promptbake.run.cache", "promptbake.stages.score"),
    "promptbake.checkpoint": ("promptbake.run.checkpoint", "promptbake.core.state"),
    "promptbake.distributed": ("promptbake.run.distributed",),
    "promptbake.teachers": (),
    "promptbake.teachers.hf": ("promptbake.builtin.hf",),
    "promptbake.students": (),
    "promptbake.students.peft": ("promptbake.builtin.peft",),
    "promptbake.students.prefix": ("promptbake.builtin.prefix",),
    "promptbake.losses": ("promptbake.builtin.losses",),
    "promptbake.models": ("promptbake.builtin.models",),
    "promptbake.scoring": ("promptbake.builtin.scoring", "promptbake.core.targets"),
    "promptbake.sampling": ("promptbake.builtin.sampling",),
    "promptbake.prefix_cache": ("promptbake.builtin.prefix_cache",),
    "promptbake.merge": ("promptbake.builtin.merge",),
    "promptbake.inference": ("promptbake.compare", "promptbake.core.metadata"),
}


class _Alias(types.ModuleType):
    """A module whose names are those of the modules they moved to."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name)
        self.__path__: list[str] = []  # a package too, for promptbake.teachers.hf
        self._targets = targets

    def __getattr__(self, attr: str) -> Any:
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        return _Alias(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        new = ", ".join(MOVED[module.__name__]) or "promptbake.builtin"
        frame = sys._getframe(1)
        while frame is not None and "importlib" in frame.f_code.co_filename:
            frame = frame.f_back
        where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("<unknown>", 0)
        warnings.warn_explicit(f"{module.__name__} moved to {new} in promptbake 0.2; the old path works "
                               f"until the next release (see docs/architecture.md)", DeprecationWarning,
                               *where)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
