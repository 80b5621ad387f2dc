"""What the tinker teacher and student share: the API key check, the ServiceClient and timeouts.

The key is read from ``TINKER_API_KEY`` only; it is handed to the SDK and never
logged, stored in options or written to the run directory.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

from promptbake import (
    BackendError,
    ConfigError,
    MissingDependencyError,
    PromptbakeError,
)

KEY_ENV = "TINKER_API_KEY"
DEFAULT_TIMEOUT = 600.0  # seconds per future: the SDK can block without an error when a model is down


def require_key(who: str) -> None:
    """Refuse before any work when the key is missing (the SDK would fail only at the first call)."""
    if not os.environ.get(KEY_ENV):
        raise ConfigError(
            f"{who} needs a Tinker API key in the environment variable {KEY_ENV}, which is not set; "
            f"export it (the key is read from the environment only and never written to the run).")


def check_timeout(who: str, timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"{who} option timeout must be a positive number of seconds, got {timeout!r}.")
    return float(timeout)


def import_tinker(who: str) -> Any:
    try:
        import tinker
    except ImportError:
        raise MissingDependencyError(
            f"{who} needs the tinker package; run: pip install promptbake-tinker") from None
    return tinker


def connect(base_url: str | None = None) -> Any:
    """A ``tinker.ServiceClient`` (lazy in 0.38: nothing is sent until the first call).

    Tests replace this function with one that returns a local stand-in.
    """
    tinker = import_tinker("The tinker backend")
    return tinker.ServiceClient(base_url=base_url, api_key=os.environ[KEY_ENV])


def _sdk_errors() -> tuple[type[BaseException], ...]:
    try:
        import tinker

        return (tinker.TinkerError,)
    except ImportError:  # pragma: no cover - tinker is a dependency
        return ()


def wait(future: Any, timeout: float, what: str) -> Any:
    """``future.result(timeout)``, with a timeout or an SDK failure turned into one BackendError sentence."""
    try:
        return future.result(timeout=timeout)
    except (concurrent.futures.TimeoutError, TimeoutError):
        raise BackendError(
            f"Tinker did not answer {what} within {timeout:g} s (the service or the model may be "
            f"unavailable); try again later, or raise the timeout option.") from None
    except PromptbakeError:
        raise
    except _sdk_errors() as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendError(f"Tinker refused {what}: {first}") from None


def resolve(made: Any, timeout: float, what: str) -> Any:
    """The client a ``create_*`` call made: 0.38 returns a future of it (``.result()``), <=0.36 the client."""
    return wait(made, timeout, what) if hasattr(made, "result") else made
