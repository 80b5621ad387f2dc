"""Requests spread over several served endpoints of one model, moved off an endpoint that dies.

A served teacher (an OpenAI-compatible API, a vLLM server) may be given several base URLs
that serve the same model. ``EndpointPool.run`` sends each item's request to one of them,
at most ``in_flight`` at a time on each; an endpoint gets its next item as soon as one of its
requests comes back, so a faster endpoint takes more. Retries are the client's own (the
openai client's ``max_retries``): the plugin's request function raises ``EndpointDown`` once
they are spent on a failure of the endpoint (connection errors, timeouts, retried statuses).
That endpoint is then dropped for the pool's life and the item goes back to the front of the
queue for the others, so every item is answered exactly once. Any other error stops the run
and is raised as is. With no endpoint left the run fails naming them all; with a single
endpoint its own error is raised, as it was before there were several.

All bookkeeping happens in the caller's thread (the workers only run the request function),
so there is no lock. A request must not depend on which endpoint answers it (each carries its
own seed), so a result is the same whichever endpoint gave it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from .errors import BackendError, ConfigError
from .progress import progress

log = logging.getLogger("promptbake")

C = TypeVar("C")
T = TypeVar("T")
R = TypeVar("R")


class EndpointDown(BackendError):
    """An endpoint stopped answering (after its client's retries); its work may go to another."""


def endpoint_urls(value: Any, option: str = "teacher_options.base_url") -> list[str]:
    """A ``base_url`` option (one URL or a list of them) as a list of distinct http(s) URLs."""
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, (list, tuple)):
        raise ConfigError(f"{option} must be a URL or a list of URLs, got {value!r}.")
    if not urls:
        raise ConfigError(f"{option} is an empty list; give at least one URL.")
    for url in urls:
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
            raise ConfigError(f"{option} must be http(s) URLs such as http://127.0.0.1:8000/v1, got {url!r}.")
    roots = [url.rstrip("/") for url in urls]
    twice = next((url for k, url in enumerate(roots) if url in roots[:k]), None)
    if twice is not None:
        raise ConfigError(f"{option} lists {twice} twice; give each endpoint once (concurrency sets its load).")
    return list(urls)


@dataclass(eq=False)
class Endpoint(Generic[C]):
    """One served endpoint: its URL (for messages and cache keys), its client, what became of it."""

    url: str
    client: C
    down: EndpointDown | None = None  # why it was dropped
    answered: int = 0  # items it answered


class EndpointPool(Generic[C]):
    """Several endpoints of one model; ``run`` and ``map`` spread items over the live ones.

    ``error`` builds the exception raised when every endpoint of several is down (a plugin
    passes its own error class); its message names them all and quotes the last failure.
    """

    def __init__(self, endpoints: Sequence[tuple[str, C]], in_flight: int, *,
                 error: Callable[[str], BaseException] = EndpointDown):
        if not endpoints:
            raise ValueError("EndpointPool needs at least one endpoint")
        if in_flight < 1:
            raise ValueError(f"in_flight must be positive, got {in_flight}")
        self.endpoints: list[Endpoint[C]] = [Endpoint(url, client) for url, client in endpoints]
        self.in_flight = in_flight
        self.error = error
        self._last: EndpointDown | None = None

    def __len__(self) -> int:
        return len(self.endpoints)

    @property
    def alive(self) -> list[Endpoint[C]]:
        return [e for e in self.endpoints if e.down is None]

    def _drop(self, endpoint: Endpoint[C], exc: EndpointDown) -> None:
        self._last = exc
        if endpoint.down is not None:
            return  # another of its requests already said so
        endpoint.down = exc
        left = len(self.alive)
        if left:
            log.warning("%s. Its requests go to the other %d endpoint%s.", str(exc).rstrip("."),
                        left, "" if left == 1 else "s")

    def gave_up(self) -> BaseException:
        """The error once no endpoint is left: a single endpoint's own, else one naming them all."""
        assert self._last is not None
        if len(self.endpoints) == 1:
            return self._last
        urls = ", ".join(e.url for e in self.endpoints)
        return self.error(f"All {len(self.endpoints)} endpoints stopped answering ({urls}); "
                          f"the last failure: {str(self._last).rstrip('.')}.")

    def each(self, fn: Callable[[Endpoint[C]], R]) -> list[tuple[Endpoint[C], R]]:
        """``fn`` on every live endpoint at once (setup checks); one that is down is dropped."""
        live = self.alive
        if not live:
            raise self.gave_up()
        with ThreadPoolExecutor(max_workers=len(live)) as pool:
            futures = [(e, pool.submit(fn, e)) for e in live]
        out: list[tuple[Endpoint[C], R]] = []
        for endpoint, future in futures:
            try:
                out.append((endpoint, future.result()))
            except EndpointDown as exc:
                self._drop(endpoint, exc)
        if not out:
            raise self.gave_up()
        return out

    def run(self, fn: Callable[[Endpoint[C], T], R], items: Sequence[T]) -> Iterator[tuple[int, R, Endpoint[C]]]:
        """``(index, result, endpoint)`` for every item, as they complete, each exactly once."""
        pending = deque(range(len(items)))
        running: dict[Future[R], tuple[int, Endpoint[C]]] = {}
        load = dict.fromkeys(self.endpoints, 0)
        executor = ThreadPoolExecutor(max_workers=self.in_flight * len(self.endpoints),
                                      thread_name_prefix="promptbake-endpoint")
        try:
            while pending or running:
                if pending and not self.alive and not running:
                    raise self.gave_up()  # after the answers still in flight came back (and were kept)
                while pending:  # fill the free slots, one endpoint after the other
                    free = [e for e in self.alive if load[e] < self.in_flight]
                    if not free:
                        break
                    for endpoint in free[:len(pending)]:
                        i = pending.popleft()
                        running[executor.submit(fn, endpoint, items[i])] = (i, endpoint)
                        load[endpoint] += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i, endpoint = running.pop(future)
                    load[endpoint] -= 1
                    try:
                        result = future.result()
                    except EndpointDown as exc:
                        self._drop(endpoint, exc)
                        pending.appendleft(i)  # not answered: another endpoint takes it
                        continue
                    endpoint.answered += 1
                    yield i, result, endpoint
        finally:
            # Nothing waits in the executor (one worker per slot); on an error the requests in
            # flight finish (the client's timeout bounds them), so no thread outlives its client.
            executor.shutdown(wait=True)

    def map(self, fn: Callable[[Endpoint[C], T], R], items: Sequence[T], desc: str, show: bool = True,
            unit: str = "request") -> list[R]:
        """``run`` with a progress bar, the results in the items' order."""
        out: list[Any] = [None] * len(items)
        for i, result, _ in progress(self.run(fn, items), desc, show, total=len(items), unit=unit):
            out[i] = result
        return out
