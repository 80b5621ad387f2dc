"""Exception types. Every error a user can cause is a :class:`PromptbakeError`.

The CLI prints a PromptbakeError as one sentence and exits non-zero; anything
else is a bug and gets a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


class AlignmentError(PromptbakeError):
    """Prompted and unprompted renderings do not line up as the contract requires."""


def suggest(name: str, options: Iterable[str]) -> str:
    """Return ' Did you mean: x?' for the closest option, or ''."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""
