"""Grouping items into batches (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import TypeVar

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    return [items[i: i + size] for i in range(0, len(items), size)]


MAX_PADDING = 0.05  # share of padded positions that bucketing is allowed to leave
WINDOWS = (1, 2, 4, 8, 16)  # batches sorted together, tried smallest first


def bucketed(lengths: Sequence[int], size: int, rng: Random, window: int | None = None,
             max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Shuffled micro-batches of indices with little padding, and as little sorting as that needs.

    Indices are shuffled, cut into windows of ``window`` batches, sorted by length
    inside each window, split into batches, and the batches shuffled again: batches
    hold similar lengths while the epoch's order stays random. Sorting costs batch
    diversity (it raised held-out KL on the benchmark, docs/performance.md), so by
    default the window is the smallest of ``WINDOWS`` that brings padding to
    ``max_padding`` or less: plain random batches (window 1) when lengths hardly
    differ, the largest window when none gets there.
    """
    seed = rng.getrandbits(64)  # one draw per epoch, whichever window is kept
    plan: list[list[int]] = []
    for w in (window,) if window is not None else WINDOWS:
        plan = _bucketed(lengths, size, Random(seed), w)
        if padding_fraction(lengths, plan) <= max_padding:
            break
    return plan


def _bucketed(lengths: Sequence[int], size: int, rng: Random, window: int) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = size * window
    out: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start: start + span], key=lambda i: lengths[i])
        out.extend(chunk[i: i + size] for i in range(0, len(chunk), size))
    rng.shuffle(out)
    return out


def padding_fraction(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> float:
    """Share of a right-padded batch's positions that are padding."""
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return 1.0 - sum(lengths) / padded if padded else 0.0
