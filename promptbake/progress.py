"""Progress bars (tqdm), quiet when disabled or when not attached to a terminal in CI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
