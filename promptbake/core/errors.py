"""Exception types. Every error a user can cause is a :class:`PromptbakeError`.

The CLI prints a PromptbakeError as one sentence and exits non-zero; anything
else is a bug and gets a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Literal


class PromptbakeError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(PromptbakeError, ValueError):
    """A setting is invalid (unknown key, out-of-range value, bad file)."""


class UnknownBackendError(PromptbakeError, LookupError):
    """A teacher, student or loss name matches nothing registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        installed = ", ".join(self.available) or "none"
        super().__init__(
            f"Unknown {kind} '{name}'.{hint} Installed: {installed}. "
            f"Run 'promptbake plugins' to see what is installed, or "
            f"'pip install promptbake-{name}' if it comes from a plugin."
        )


class DuplicateBackendError(PromptbakeError):
    """Two plugins registered the same name for the same kind."""


class MissingDependencyError(PromptbakeError, ImportError):
    """An optional package a backend needs is not installed."""


class CapabilityError(PromptbakeError):
    """A teacher, student and loss that cannot work together."""


class BackendError(PromptbakeError):
    """A service a backend talks to refused or failed a request (after its retries)."""


class PromptbakeWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints it as one line)."""


class AlignmentError(PromptbakeError):
    """Prompted and unprompted renderings do not line up as the contract requires."""


def suggest(name: str, options: Iterable[str]) -> str:
    """Return ' Did you mean: x?' for the closest option, or ''."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""


def http_failure(code: int) -> Literal["key", "missing", "retried", "rejected"]:
    """Which kind of sentence an HTTP error status from a service calls for.

    "key": the API key was refused (401, 403); "missing": no such model or path
    (404); "retried": a temporary failure that clients retry until they give up
    (408, 409, 429, 5xx, as the openai client does); "rejected": the request itself.
    """
    if code in (401, 403):
        return "key"
    if code == 404:
        return "missing"
    if code in (408, 409, 429) or code >= 500:
        return "retried"
    return "rejected"


def server_detail(body: object, message: str = "", *, secret: str | None = None, limit: int = 300) -> str:
    """What a service said about a failed request, as one line to quote in a sentence.

    Uses the ``message`` field of a JSON error ``body``, else the body, else
    ``message`` (the client's own text): its first line, at most ``limit``
    characters, ``secret`` (the API key) masked, with no closing period (the
    caller ends the sentence).
    """
    text = body.get("message") if isinstance(body, Mapping) else body
    text = str(text or message or "").strip()
    if secret and len(secret) >= 4:  # never repeat an API key, even if a proxy echoes it
        text = text.replace(secret, "***")  # before cutting, so no prefix of it survives
    line = text.splitlines()[0][:limit].strip().rstrip(".") if text else ""
    return line or "no details"
