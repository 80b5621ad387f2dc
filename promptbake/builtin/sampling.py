"""Batched sampling from a local transformers model, shared by the hf teacher and the students.

``temperature == 0`` means greedy decoding (as in the OpenAI and vLLM APIs).

Rows that start with a cached system prompt decode with shared-prefix attention
(:func:`decode_shared`): every step attends to the one cached prompt, so no row
carries its own copy of the prompt's KV, and decoding reads it once per step
rather than once per row. Other rows go through ``model.generate``.

Both paths sample through the same logits processors (:func:`processors`): the
model's plain distribution at ``temperature``/``top_p``, stop ids held back until
``min_new_tokens``, the output layer's padding rows past the tokenizer's vocabulary
never drawn, and the ``SamplingConfig.extras`` (see decoding.py). ``model.generate``
runs with a bare generation config, so the model's ``generation_config.json``
(a repetition penalty, top-k...) is applied only where the extras ask for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core.batching import batches
from ..core.interfaces import SamplingConfig
from ..core.progress import progress
from ..core.types import Sample
from . import hf_internals
from .low_precision import bf16_products, linear_copies
from .prefix_cache import (
    PREFIX_KWARG,
    PrefixCache,
    causal_mask,
    has_sliding_window,
    shared_prefix_attention,
    supports_shared_prefix,
    unwrapped,
)

# Finished rows leave the batch once they are at least this share of it (compacting
# the batch's own KV costs a copy of it, so not after every finished row).
COMPACT_SHARE = 0.25


@torch.no_grad()
def sample_rows(model: Any, prefixes: Sequence[list[int]], sampling: SamplingConfig, pad_id: int, device: Any,
                batch_size: int = 16, prefix: PrefixCache | None = None, show_progress: bool = False,
                label: str = "generate", vocab: int | None = None, bf16: bool = False) -> list[list[Sample]]:
    """``sampling.n`` samples for each token prefix, in order, cut after the first stop id.

    A :class:`PrefixCache` (the rendered system prompt's KV, shared with scoring)
    saves running the shared start of every row again. ``vocab``: only the first
    ``vocab`` tokens are ever drawn (the tokenizer's; the output layer may have more rows).
    ``bf16``: the decoding forwards take every float32 linear layer's product in
    bfloat16 (:mod:`.low_precision`; the ``generate_bf16`` setting); the prefix cache, which
    scoring shares, is computed as loaded all the same.
    """
    stop = list(sampling.stop_ids)
    chunk = max(1, batch_size // sampling.n)
    indexed = list(enumerate(list(p) for p in prefixes))
    if has_sliding_window(model):
        # Left padding would move what a sliding window covers (transformers counts pads in it):
        # rows of one length only, so no row is padded.
        by_length: dict[int, list[tuple[int, list[int]]]] = {}
        for item in indexed:
            by_length.setdefault(len(item[1]), []).append(item)
        parts = [part for group in by_length.values() for part in batches(group, chunk)]
    else:
        parts = batches(indexed, chunk)
    out: list[list[Sample]] = [[] for _ in indexed]
    copies = linear_copies(model) if bf16 else {}  # made once a call, dropped after it
    for i, part in enumerate(progress(parts, label, show_progress, leave=False)):
        seed = sampling.seed * 100003 + i
        rows = [p for _, p in part]
        # Outside the bfloat16 products: the prefix's KV (scoring reads it too) and the
        # shared-prefix check (a probe against the model's own logits).
        shared = prefix.usable(model, rows, min(len(p) for p in rows) - 1, device) if prefix else 0
        in_place = bool(shared) and supports_shared_prefix(model)
        with bf16_products(copies):
            if in_place:
                new = decode_shared(model, rows, shared, prefix, sampling, pad_id, device, seed,  # type: ignore[arg-type]
                                    vocab)
            else:
                new = _generate(model, rows, shared, prefix, sampling, pad_id, device, seed, vocab)
        for row, (index, _) in enumerate(part):
            out[index] = [Sample(*cut_at_stop(seq, stop)) for seq in new[row * sampling.n: (row + 1) * sampling.n]]
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


def processors(sampling: SamplingConfig, prompt_width: int, rows: int, vocab: int | None = None) -> Any:
    """The logits processors every sampling path applies, in transformers' own order: padding
    rows of the output layer (``rows`` of them, past ``vocab``) never drawn; the extras'
    repetition penalty and no-repeat n-grams; stop ids held back until ``min_new_tokens``
    (the inputs the processors see start with ``prompt_width`` prompt tokens); then, when
    sampling, temperature, top-k, top-p, min-p and typical-p."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    extras = sampling.extras
    out = LogitsProcessorList()
    if extras.get("repetition_penalty", 1.0) != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(float(extras["repetition_penalty"])))
    if extras.get("no_repeat_ngram_size"):
        out.append(NoRepeatNGramLogitsProcessor(int(extras["no_repeat_ngram_size"])))
    if sampling.min_new_tokens and sampling.stop_ids:
        out.append(MinNewTokensLengthLogitsProcessor(prompt_width, sampling.min_new_tokens, list(sampling.stop_ids)))
    if vocab is not None and rows > vocab:
        out.append(SuppressTokensLogitsProcessor(list(range(vocab, rows))))
    if sampling.temperature == 0:
        return out
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if extras.get("top_k"):
        out.append(TopKLogitsWarper(int(extras["top_k"])))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(sampling.top_p))
    if extras.get("min_p"):
        out.append(MinPLogitsWarper(float(extras["min_p"])))
    if extras.get("typical_p", 1.0) != 1.0:
        out.append(TypicalLogitsWarper(float(extras["typical_p"])))
    return out


@contextlib.contextmanager
def bare_generation_config(model: Any) -> Iterator[None]:
    """Inside the block ``model.generate`` starts from transformers' global defaults, not the
    model's ``generation_config.json``: every processor comes from :func:`processors`."""
    from transformers import GenerationConfig

    base = unwrapped(model)
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def _rows_of(model: Any) -> int:
    return int(unwrapped(model).get_output_embeddings().weight.shape[0])


def _generate(model: Any, prefixes: list[list[int]], shared: int, prefix: PrefixCache | None,
              sampling: SamplingConfig, pad_id: int, device: Any, seed: int, vocab: int | None = None) -> list[list[int]]:
    """``model.generate`` over the rows (each prefix ``sampling.n`` times); a cached prefix
    is copied to every row. With ``n > 1`` each prefix's own tokens are run once and their
    KV repeated for its ``n`` rows, as in :func:`decode_shared`."""
    n = sampling.n
    ids, real = _left_padded([p[shared:] for p in prefixes], pad_id)
    if shared:  # the shared start, then each row's left-padded rest
        ids = torch.cat([torch.tensor([prefixes[0][:shared]] * len(prefixes)), ids], 1)
        real = torch.cat([torch.ones((len(prefixes), shared), dtype=torch.bool), real], 1)
    ids, real = ids.to(device), real.to(device)
    cache = prefix.expand(len(prefixes)) if shared and prefix else None
    if n > 1:
        cached = shared if cache is not None else 0
        if ids.shape[1] - 1 > cached:
            cache = _prefill(model, ids, real, cached, cache)
        if cache is not None:
            cache.batch_repeat_interleave(n)
        ids, real = ids.repeat_interleave(n, 0), real.repeat_interleave(n, 0)
    extra: dict[str, Any] = hf_internals.with_cache(model, cache) if cache is not None else {}
    if sampling.temperature == 0:
        extra.update(do_sample=False)
    else:
        torch.manual_seed(seed)
        # Temperature, top-k and top-p at their neutral values: the warpers come from processors().
        extra.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    with bare_generation_config(model):
        gen = model.generate(
            input_ids=ids, attention_mask=real.long(), max_new_tokens=sampling.max_new_tokens,
            eos_token_id=list(sampling.stop_ids), pad_token_id=pad_id,
            logits_processor=processors(sampling, ids.shape[1], _rows_of(model), vocab), **extra,
        )
    return gen[:, ids.shape[1]:].tolist()


def _prefill(model: Any, ids: torch.Tensor, real: torch.Tensor, cached: int, cache: Any) -> Any:
    """The KV cache of every row's tokens but its last (the first ``cached`` already in
    ``cache``), at the positions ``model.generate`` gives left-padded rows; generate then
    runs from the last token, as with any cache it is handed."""
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    cache = cache if cache is not None else hf_internals.new_cache(model)
    model(input_ids=ids[:, cached:-1], attention_mask=real[:, :-1].long(), position_ids=positions[:, cached:-1],
          use_cache=True, **hf_internals.with_cache(model, cache))
    return cache


def decode_shared(model: Any, prefixes: list[list[int]], shared: int, prefix: PrefixCache,
                  sampling: SamplingConfig, pad_id: int, device: Any, seed: int,
                  vocab: int | None = None) -> list[list[int]]:
    """New tokens for each prefix ``sampling.n`` times, rows in order, decoded with
    shared-prefix attention to the first ``shared`` tokens (cached in ``prefix``).

    Each prefix's own tokens are run once and their KV repeated for its ``n`` rows.
    The next-token distribution goes through :func:`processors`, which see what
    ``model.generate`` would (the shared start, each row's left-padded rest, then the new
    tokens), so both paths sample the same distribution (each token drawn by :func:`draw`
    here, by ``torch.multinomial`` inside ``model.generate``). What follows a row's first stop
    id is filler (callers cut there); stopped rows leave the batch once enough have.
    """
    greedy = sampling.temperature == 0
    generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(list(sampling.stop_ids), dtype=torch.long, device=device)

    ids, real = _left_padded([p[shared:] for p in prefixes], pad_id)
    ids, real = ids.to(device), real.to(device)
    # What the processors see of each row's prompt, as model.generate would see it.
    seen = torch.cat([torch.tensor([prefixes[0][:shared]], device=device).expand(len(prefixes), -1), ids], 1)
    warp = processors(sampling, seen.shape[1], _rows_of(model), vocab)
    # Positions continue after the cached prompt; a left pad's position is never read.
    positions = (real.long().cumsum(-1) - 1).clamp(min=0) + shared
    position = positions[:, -1:] + 1  # each row's next token
    cache = hf_internals.new_cache(model)
    call = {PREFIX_KWARG: prefix, **hf_internals.with_cache(model, cache), "use_cache": True}
    with shared_prefix_attention(model):
        logits = model(input_ids=ids, attention_mask=causal_mask(real),
                       position_ids=positions, logits_to_keep=1, **call).logits[:, -1]
        n = sampling.n
        if n > 1:  # the rows of one prefix share its prefill
            cache.batch_repeat_interleave(n)
            logits, real = logits.repeat_interleave(n, 0), real.repeat_interleave(n, 0)
            position, seen = position.repeat_interleave(n, 0), seen.repeat_interleave(n, 0)
        rows = len(prefixes) * n
        new = torch.full((rows, sampling.max_new_tokens), pad_id, dtype=torch.long, device=device)
        alive = torch.arange(rows, device=device)  # original row of each batch row
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        for step in range(sampling.max_new_tokens):
            scores = warp(torch.cat([seen[alive], new[alive, :step]], 1), logits.float())
            if greedy:
                token = scores.argmax(-1)
            else:
                token = draw(scores, generator)
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


def draw(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from ``softmax(scores)`` [rows, V] by inverting its cumulative sum
    (in float64; float32 on MPS) at one uniform draw per row: the categorical distribution
    exactly, and a token whose score is ``-inf`` is never drawn. ``torch.multinomial`` draws one
    exponential variate per vocabulary entry and row instead, a quarter of a decoding step on a
    2-core CPU (docs/performance.md, "Smaller steps, and the sampler's draw")."""
    wide = torch.float32 if scores.device.type == "mps" else torch.float64  # MPS has no float64
    cdf = (scores - scores.amax(-1, keepdim=True)).exp().to(wide).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand((scores.shape[0], 1), generator=generator, dtype=wide, device=scores.device)
    # Below the total even where u * total rounds up to it, so some position exceeds it; the
    # first one that does has a weight above zero (a flat step never exceeds what it follows).
    at = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, at, right=True)[:, 0]


def cut_at_stop(seq: list[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token; whether one was found."""
    for i, tok in enumerate(seq):
        if tok in stop:
            return seq[: i + 1], True
    return seq, False
