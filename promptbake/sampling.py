"""Batched sampling from a local transformers model, shared by the hf teacher and the students.

``temperature == 0`` means greedy decoding (as in the OpenAI and vLLM APIs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .batching import batches
from .interfaces import SamplingConfig
from .prefix_cache import PrefixCache
from .progress import progress
from .types import Sample


@torch.no_grad()
def sample_rows(model: Any, prefixes: Sequence[list[int]], sampling: SamplingConfig, pad_id: int, device: Any,
                batch_size: int = 16, prefix: PrefixCache | None = None, show_progress: bool = False,
                label: str = "generate") -> list[list[Sample]]:
    """``sampling.n`` samples for each token prefix, in order, cut after the first stop id.

    A :class:`PrefixCache` (the rendered system prompt's KV, shared with scoring)
    saves running the shared start of every row again.
    """
    stop = list(sampling.stop_ids)
    out: list[list[Sample]] = []
    chunk = max(1, batch_size // sampling.n)
    greedy = sampling.temperature == 0
    parts = batches(list(prefixes), chunk)
    for i, part in enumerate(progress(parts, label, show_progress, leave=False)):
        rows = [list(p) for p in part for _ in range(sampling.n)]
        # The shared start comes from the cache; the row-specific rest is left-padded
        # after it so all rows end together.
        shared = prefix.usable(model, rows, min(len(r) for r in rows) - 1, device) if prefix else 0
        width = max(len(r) for r in rows) - shared
        ids = torch.full((len(rows), shared + width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        for row, p in enumerate(rows):
            start = shared + width - (len(p) - shared)
            ids[row, :shared] = torch.tensor(p[:shared])
            ids[row, start:] = torch.tensor(p[shared:])
            mask[row, :shared] = 1
            mask[row, start:] = 1
        extra: dict[str, Any] = {"past_key_values": prefix.expand(len(rows))} if shared else {}
        if greedy:
            extra.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(sampling.seed * 100003 + i)
            extra.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens, eos_token_id=stop, pad_token_id=pad_id, **extra,
        )
        new = gen[:, shared + width:].tolist()
        for row in range(len(part)):
            out.append([Sample(*cut_at_stop(seq, stop)) for seq in new[row * sampling.n: (row + 1) * sampling.n]])
    return out


def cut_at_stop(seq: list[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token; whether one was found."""
    for i, tok in enumerate(seq):
        if tok in stop:
            return seq[: i + 1], True
    return seq, False
