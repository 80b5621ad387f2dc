"""A pytest plugin: a deprecation that promptbake's own call into a library causes fails the test.

A fresh install resolves the newest transformers, peft and trl, so a deprecated argument
promptbake passes today is an error in a later release. transformers announces them two
ways: ``warnings.warn(..., FutureWarning)`` (``deprecate_kwarg``) and ``logger.warning_once``
("... is deprecated"); both are watched here. A deprecation counts as promptbake's when,
walking out from where it was raised past the raising library's own frames (and torch's
module-call frames), the first frame met is promptbake's code (``promptbake/`` or a
plugin's package). One that another library's code causes (peft calling transformers
with an old name) is that library's and is not counted; nor are the tests' own calls.
"""

from __future__ import annotations

import logging
import sys
import sysconfig
import warnings
from pathlib import Path
from types import FrameType

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = [ROOT / "promptbake", *sorted(p for p in (ROOT / "plugins").glob("*/promptbake_*") if p.is_dir())]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
WATCHED_LOGGERS = ("transformers", "peft", "trl", "accelerate")
found: list[str] = []


def owner(filename: str) -> str:
    """'promptbake', 'stdlib', 'tests', a third-party distribution's top-level package, or '?'."""
    path = Path(filename).resolve()
    if any(path.is_relative_to(p) for p in OURS):
        return "promptbake"
    if path == Path(__file__).resolve():
        return "guard"
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1]
    if path.is_relative_to(STDLIB):
        return "stdlib"
    if path.is_relative_to(ROOT):
        return "tests"
    return "?"


def caller_is_ours(frame: FrameType | None) -> str | None:
    """Where promptbake called, when it is the code that caused the deprecation raised at ``frame``."""
    emitter = None
    while frame is not None:
        who = owner(frame.f_code.co_filename)
        if who in ("guard", "stdlib"):
            pass
        elif emitter is None:
            emitter = who
        elif who not in (emitter, "torch"):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}" if who == "promptbake" else None
        frame = frame.f_back
    return None


def record(message: str, frame: FrameType | None) -> None:
    where = caller_is_ours(frame)
    if where is not None:
        found.append(f"{message.strip().splitlines()[0]} (called at {where})")


_warn = warnings.warn


def guarded_warn(message, category=None, stacklevel=1, source=None):  # type: ignore[no-untyped-def]
    kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(kind, DeprecationWarning | FutureWarning):
        record(str(message), sys._getframe(1))
    return _warn(message, category, stacklevel + 1, source)


class DeprecationLog(logging.Handler):
    def emit(self, rec: logging.LogRecord) -> None:
        text = rec.getMessage()
        if rec.levelno >= logging.WARNING and "deprecat" in text.lower():
            record(text, sys._getframe(1))


def pytest_configure(config: pytest.Config) -> None:
    warnings.warn = guarded_warn
    handler = DeprecationLog()
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).addHandler(handler)


@pytest.fixture(autouse=True)
def no_deprecated_calls():
    """Fail a test in which promptbake's own calls raised a deprecation."""
    found.clear()
    once = sys.modules.get("transformers.utils.logging")
    if once is not None:  # warning_once would hide a message that an earlier test already logged
        once.warning_once.cache_clear()
    yield
    if found:
        seen = list(dict.fromkeys(found))
        found.clear()
        pytest.fail("promptbake called a deprecated API:\n" + "\n".join(seen), pytrace=False)
