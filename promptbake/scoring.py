"""Teacher-forced forward passes and turning logits into targets (torch).

Shared by the hf teacher and the peft student: both need the distribution at
every response position of a batch of trajectories, on one of the two sides.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .interfaces import Side
from .types import Targets, Trajectory


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def response_logits(
    model: Any, trajectories: Sequence[Trajectory], side: Side, pad_id: int, device: Any,
) -> tuple[torch.Tensor, list[int]]:
    """Logits [N, V] at the rows that predict each response token, trajectory after trajectory.

    Sequences are right-padded; only the span of rows that covers some response
    is projected through the output layer (``logits_to_keep``), so long system
    prompts cost no vocabulary-sized work.
    """
    seqs = [t.prompted_ids if side == "prompted" else t.unprompted_ids for t in trajectories]
    lengths = [t.response_len for t in trajectories]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    # Row j predicts token j+1: response token i of a sequence of length L sits at
    # L - R + i, so it is predicted by row L - R - 1 + i.
    starts = [len(s) - r - 1 for s, r in zip(seqs, lengths)]
    lo = min(starts)
    hi = max(len(s) - 1 for s in seqs)
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
        offset = lo
    else:
        offset = 0
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs)
    logits = out.logits
    rows = [logits[b, s - offset: s - offset + r] for b, (s, r) in enumerate(zip(starts, lengths))]
    return torch.cat(rows, dim=0), lengths


def logits_to_targets(
    logits: torch.Tensor, lengths: Sequence[int], trajectories: Sequence[Trajectory],
    *, top_k: int | None, full: bool,
) -> list[Targets]:
    """Split flattened logits per trajectory into top-K and/or full log-prob targets."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = []
    start = 0
    for traj, r in zip(trajectories, lengths):
        lp = logprobs[start: start + r]
        start += r
        item = Targets(sampled_ids=torch.tensor(traj.response_ids, dtype=torch.long))
        if top_k:
            k = min(top_k, lp.shape[-1])
            values, indices = lp.topk(k, dim=-1)
            item.topk_ids = indices.to(torch.int32).cpu()
            item.topk_logprobs = values.cpu()
            item.tail_logprob = log1mexp(torch.logsumexp(values, dim=-1)).cpu()
        if full:
            item.full_logprobs = lp.cpu()
        out.append(item)
    return out
