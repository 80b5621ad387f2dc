"""Batched sampling from a local transformers model, shared by the hf teacher and the students.

``temperature == 0`` means greedy decoding (as in the OpenAI and vLLM APIs).

Rows that start with a cached system prompt decode with shared-prefix attention
(:func:`decode_shared`): every step attends to the one cached prompt, so no row
carries its own copy of the prompt's KV, and decoding reads it once per step
rather than once per row. Other rows go through ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .batching import batches
from .interfaces import SamplingConfig
from .prefix_cache import (
    PREFIX_KWARG,
    PrefixCache,
    causal_mask,
    shared_prefix_attention,
    supports_shared_prefix,
    unwrapped,
)
from .progress import progress
from .types import Sample

# Finished rows leave the batch once they are at least this share of it (compacting
# the batch's own KV costs a copy of it, so not after every finished row).
COMPACT_SHARE = 0.25


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
    parts = batches(list(prefixes), chunk)
    for i, part in enumerate(progress(parts, label, show_progress, leave=False)):
        seed = sampling.seed * 100003 + i
        part = [list(p) for p in part]
        shared = prefix.usable(model, part, min(len(p) for p in part) - 1, device) if prefix else 0
        if shared and supports_shared_prefix(model):
            new = decode_shared(model, part, shared, prefix, sampling, pad_id, device, seed)  # type: ignore[arg-type]
        else:
            new = _generate(model, part, shared, prefix, sampling, pad_id, device, seed)
        for row in range(len(part)):
            out.append([Sample(*cut_at_stop(seq, stop)) for seq in new[row * sampling.n: (row + 1) * sampling.n]])
    return out


def _left_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows left-padded to one width (so all end together) and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, r in enumerate(rows):
        if r:
            ids[row, width - len(r):] = torch.tensor(r)
            real[row, width - len(r):] = True
    return ids, real


def _generate(model: Any, prefixes: list[list[int]], shared: int, prefix: PrefixCache | None,
              sampling: SamplingConfig, pad_id: int, device: Any, seed: int) -> list[list[int]]:
    """``model.generate`` over the rows (each prefix ``sampling.n`` times); a cached prefix
    is copied to every row."""
    rows = [p for p in prefixes for _ in range(sampling.n)]
    ids, real = _left_padded([r[shared:] for r in rows], pad_id)
    if shared:  # the shared start, then each row's left-padded rest
        ids = torch.cat([torch.tensor([rows[0][:shared]] * len(rows)), ids], 1)
        real = torch.cat([torch.ones((len(rows), shared), dtype=torch.bool), real], 1)
    extra: dict[str, Any] = {"past_key_values": prefix.expand(len(rows))} if shared and prefix else {}
    if sampling.temperature == 0:
        extra.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)
        extra.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    gen = model.generate(
        input_ids=ids.to(device), attention_mask=real.long().to(device), max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=sampling.min_new_tokens, eos_token_id=list(sampling.stop_ids), pad_token_id=pad_id, **extra,
    )
    return gen[:, ids.shape[1]:].tolist()


def decode_shared(model: Any, prefixes: list[list[int]], shared: int, prefix: PrefixCache,
                  sampling: SamplingConfig, pad_id: int, device: Any, seed: int) -> list[list[int]]:
    """New tokens for each prefix ``sampling.n`` times, rows in order, decoded with
    shared-prefix attention to the first ``shared`` tokens (cached in ``prefix``).

    Each prefix's own tokens are run once and their KV repeated for its ``n`` rows.
    The next-token distribution is the model's at ``sampling.temperature``, cut to
    ``sampling.top_p`` (transformers' own logits warpers); stop ids are held back
    until ``sampling.min_new_tokens``. What follows a row's first stop id is
    filler (callers cut there); stopped rows leave the batch once enough have.
    """
    from transformers import DynamicCache
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    greedy = sampling.temperature == 0
    warpers = LogitsProcessorList()
    if not greedy and sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if not greedy and sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(list(sampling.stop_ids), dtype=torch.long, device=device)

    ids, real = _left_padded([p[shared:] for p in prefixes], pad_id)
    ids, real = ids.to(device), real.to(device)
    # Positions continue after the cached prompt; a left pad's position is never read.
    positions = (real.long().cumsum(-1) - 1).clamp(min=0) + shared
    position = positions[:, -1:] + 1  # each row's next token
    cache = DynamicCache(config=unwrapped(model).config)
    call = {PREFIX_KWARG: prefix, "past_key_values": cache, "use_cache": True}
    with shared_prefix_attention(model):
        logits = model(input_ids=ids, attention_mask=causal_mask(real),
                       position_ids=positions, logits_to_keep=1, **call).logits[:, -1]
        n = sampling.n
        if n > 1:  # the rows of one prefix share its prefill
            cache.batch_repeat_interleave(n)
            logits, real = logits.repeat_interleave(n, 0), real.repeat_interleave(n, 0)
            position = position.repeat_interleave(n, 0)
        rows = len(prefixes) * n
        new = torch.full((rows, sampling.max_new_tokens), pad_id, dtype=torch.long, device=device)
        alive = torch.arange(rows, device=device)  # original row of each batch row
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        for step in range(sampling.max_new_tokens):
            scores = logits.float()
            if step < sampling.min_new_tokens and len(stop):
                scores[:, stop] = float("-inf")
            if greedy:
                token = scores.argmax(-1)
            else:
                scores = warpers(new[alive, :step], scores)
                token = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
            new[alive, step] = token
            finished |= torch.isin(token, stop)
            if step + 1 == sampling.max_new_tokens or bool(finished.all()):
                break
            if int(finished.sum()) >= COMPACT_SHARE * len(alive):
                keep = (~finished).nonzero()[:, 0]
                cache.batch_select_indices(keep)
                alive, token, real, position = alive[keep], token[keep], real[keep], position[keep]
                finished = finished[keep]
            real = torch.cat([real, torch.ones_like(real[:, :1])], 1)
            logits = model(input_ids=token[:, None], attention_mask=real[:, None, None, :], position_ids=position,
                           **call).logits[:, -1]
            position = position + 1
    return new.tolist()


def cut_at_stop(seq: list[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token; whether one was found."""
    for i, tok in enumerate(seq):
        if tok in stop:
            return seq[: i + 1], True
    return seq, False
