"""Helpers for teachers that build targets from top-K lists (hosted APIs, vLLM, Tinker)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .types import Targets

if TYPE_CHECKING:
    import torch


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends."""
    import torch

    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sparse_targets(
    rows: Sequence[Sequence[tuple[int, float]]], sampled_ids: Sequence[int], *,
    width: int | None = None, weight: Sequence[float] | torch.Tensor | None = None,
) -> Targets:
    """Top-K Targets from per-position rows of (token id, log-prob), one row per sampled id.

    For teachers that return top-K lists (hosted APIs, vLLM, Tinker). Rows are
    padded to ``width`` (default: the longest row, at least 1) the way
    ``BatchTargets`` widens them: the row's first id again at log-prob -inf,
    which carries no mass. An empty row holds its sampled id at -inf and gets a
    tail of 0 (all mass unknown); callers give it weight 0 or refuse it.
    """
    import torch

    if len(rows) != len(sampled_ids):
        raise ValueError(f"{len(rows)} top-K rows for {len(sampled_ids)} sampled tokens")
    k = max(1, max((len(r) for r in rows), default=1)) if width is None else width
    ids = torch.zeros((len(rows), k), dtype=torch.int32)
    values = torch.full((len(rows), k), -math.inf, dtype=torch.float64)
    for r, (row, tok) in enumerate(zip(rows, sampled_ids)):
        if len(row) > k:
            raise ValueError(f"top-K row {r} has {len(row)} entries, more than the width {k}")
        ids[r] = int(row[0][0]) if row else int(tok)  # padding repeats a real id
        if row:
            ids[r, : len(row)] = torch.tensor([int(i) for i, _ in row], dtype=torch.int32)
            values[r, : len(row)] = torch.tensor([float(lp) for _, lp in row], dtype=torch.float64)
    # Tail = log(1 - sum p_k) in float64: the kept mass can be close to 1. When the
    # sum rounds to >= 1 there is no tail: -inf, never NaN.
    mass = torch.logsumexp(values, dim=-1)
    tail = torch.where(mass < 0, log1mexp(mass), torch.full_like(mass, -math.inf))
    return Targets(
        sampled_ids=torch.tensor([int(t) for t in sampled_ids], dtype=torch.long),
        topk_ids=ids,
        topk_logprobs=values.to(torch.float32),
        tail_logprob=tail.to(torch.float32),
        weight=None if weight is None else torch.as_tensor(weight, dtype=torch.float32),
    )
