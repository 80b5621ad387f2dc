"""Progress bars (tqdm), quiet when disabled or when not attached to a terminal in CI, and stage timings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None,
             unit: str = "batch", **kwargs: Any) -> Iterator[T]:
    """Iterate with a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, **kwargs)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass


@contextmanager
def counter(total: int, desc: str, enabled: bool = True, unit: str = "item") -> Iterator[Any]:
    """A bar advanced by hand (``bar.update(n)``), for work done in chunks; silent when disabled."""
    if not enabled:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        yield bar


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Put the block's wall time in ``timings[name]`` (a bake's stage timings, in metrics.jsonl)."""
    import time

    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
