"""promptbake-tinker: the ``tinker`` teacher and student, on the Tinker training service.

Registered through the ``promptbake`` entry-point group; the classes are named
as "module:Class" strings so loading the plugin imports neither tinker nor torch.
"""

from __future__ import annotations

from promptbake import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_teachers(register):  # type: ignore[no-untyped-def]
    register("tinker", "promptbake_tinker.teacher:TinkerTeacher")


@hookimpl
def register_students(register):  # type: ignore[no-untyped-def]
    register("tinker", "promptbake_tinker.student:TinkerStudent")
