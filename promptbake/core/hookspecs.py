"""Hook specifications for promptbake plugins.

Each hook receives a ``register`` callback. A plugin calls it once per backend::

    @promptbake.hookimpl
    def register_teachers(register):
        register("mine", "promptbake_mine.teacher:MyTeacher")

The second argument is the backend class, or a ``"module:attr"`` string that is
imported only when the backend is used, so plugin modules stay cheap to import.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("promptbake")
hookimpl = pluggy.HookimplMarker("promptbake")


@hookspec
def register_teachers(register):  # type: ignore[no-untyped-def]
    """Register teacher backends: ``register(name, cls_or_path, aliases=())``."""


@hookspec
def register_students(register):  # type: ignore[no-untyped-def]
    """Register student backends: ``register(name, cls_or_path, aliases=())``."""


@hookspec
def register_losses(register):  # type: ignore[no-untyped-def]
    """Register losses: ``register(name, cls_or_path, aliases=())``."""


@hookspec
def register_probes(register):  # type: ignore[no-untyped-def]
    """Register behaviour probes: ``register(name, cls_or_path, aliases=())``.

    A probe is a ``promptbake.Probe`` subclass, built with the text after
    ``=`` in a spec such as ``language=fr``.
    """


@hookspec
def register_exporters(register):  # type: ignore[no-untyped-def]
    """Register export formats: ``register(name, cls_or_path, aliases=())``.

    An exporter is a ``promptbake.Exporter`` subclass: ``promptbake export RUN --to NAME``
    and the ``export`` setting of a bake use it.
    """
