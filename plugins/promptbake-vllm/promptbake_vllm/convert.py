"""Turn vLLM's log-probability structures into promptbake :class:`Targets` and :class:`Sample`.

vLLM reports log-probabilities per position in three shapes, all read here:

* ``list[dict[int, Logprob] | None]``: ``RequestOutput.prompt_logprobs`` and
  ``CompletionOutput.logprobs``. Each dict holds the top-K tokens plus the
  actual token at that position (K or K+1 keys); ``Logprob`` has ``logprob``,
  ``rank`` and ``decoded_token``. Prompt entry 0 is None.
* ``FlatLogprobs`` (``SamplingParams(flat_logprobs=True)``): parallel lists
  ``token_ids``, ``logprobs``, ``ranks``, ``decoded_tokens`` with
  ``start_indices[p]:end_indices[p]`` per position. The actual token comes
  first and is repeated when it is also in the top-K.
* The OpenAI-compatible server's JSON: ``choices[i].prompt_logprobs`` as dicts
  from token-id strings to ``{"logprob", "rank", "decoded_token"}``, with -inf
  written as -9999.0; generated tokens as ``"token_id:N"`` strings when
  ``return_tokens_as_token_ids`` is set.

torch is imported inside the functions that build tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from promptbake import PromptbakeError, Sample, Targets

# vLLM's server writes -inf log-probs as -9999.0 (JSON has no infinity).
SERVER_NEG_INF = -9999.0
_TOKEN_ID_PREFIX = "token_id:"

# (token id, log-prob, rank or None)
Entry = tuple[int, float, int | None]


class VLLMResponseError(PromptbakeError):
    """vLLM returned something that cannot be turned into targets."""


def parse_token_id(token: str) -> int:
    """The id in a ``"token_id:N"`` token string (vLLM's ``return_tokens_as_token_ids``)."""
    head, sep, number = token.partition(":") if isinstance(token, str) else ("", "", "")
    if head == "token_id" and sep and number.isascii() and number.isdigit():
        return int(number)
    raise VLLMResponseError(
        f"The server returned the token {token!r} where 'token_id:N' was expected; the "
        f"vllm-server teacher needs a vLLM OpenAI-compatible server, which honours "
        f"return_tokens_as_token_ids."
    )


def _key_id(key: Any) -> int:
    """A token id from a dict key: an int, or a JSON object key (a decimal or 'token_id:N' string)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        if key.isascii() and key.isdigit():
            return int(key)
        return parse_token_id(key)
    raise VLLMResponseError(f"vLLM returned {key!r} where a token id was expected.")


def _value(value: Any) -> tuple[float, int | None]:
    """(log-prob, rank) from a ``Logprob``, its JSON dict, or a bare float."""
    if isinstance(value, Mapping):
        logprob, rank = value.get("logprob"), value.get("rank")
    elif hasattr(value, "logprob"):
        logprob, rank = value.logprob, getattr(value, "rank", None)
    else:
        logprob, rank = value, None
    if not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
        raise VLLMResponseError(f"vLLM returned {value!r} where a log-probability was expected.")
    logprob = float(logprob)
    return (-math.inf if logprob <= SERVER_NEG_INF else logprob), rank


def is_flat(logprobs: Any) -> bool:
    """Whether ``logprobs`` is a ``FlatLogprobs`` (flat lists with per-position index ranges)."""
    return all(hasattr(logprobs, a) for a in ("start_indices", "end_indices", "token_ids", "logprobs"))


def num_positions(logprobs: Any) -> int:
    """How many positions a log-prob container describes."""
    return len(logprobs.start_indices) if is_flat(logprobs) else len(logprobs)


def entries_at(logprobs: Any, position: int) -> list[Entry]:
    """The (id, log-prob, rank) entries at one position, each id once."""
    out: dict[int, Entry] = {}
    if is_flat(logprobs):
        start, end = logprobs.start_indices[position], logprobs.end_indices[position]
        ranks = logprobs.ranks if getattr(logprobs, "ranks", None) is not None else [None] * end
        for i in range(start, end):
            tok = int(logprobs.token_ids[i])
            # The actual token is listed first and again if it is in the top-K: keep one.
            if tok not in out:
                lp, _ = _value(logprobs.logprobs[i])
                out[tok] = (tok, lp, ranks[i])
        return list(out.values())
    entry = logprobs[position]
    if entry is None:
        return []
    if not isinstance(entry, Mapping):
        raise VLLMResponseError(f"vLLM returned {type(entry).__name__} where a dict of log-probs was expected.")
    for key, value in entry.items():
        tok = _key_id(key)
        lp, rank = _value(value)
        out[tok] = (tok, lp, rank)
    return list(out.values())


def _best(entries: list[Entry], k: int) -> list[Entry]:
    # Highest log-prob first; rank breaks ties (the actual token can tie with the K-th).
    return sorted(entries, key=lambda e: (-e[1], e[2] if e[2] is not None else math.inf))[:k]


def topk_targets(rows: Sequence[list[Entry]], sampled_ids: Sequence[int], top_k: int) -> Targets:
    """Targets from per-position entries: the K best of each row, sorted, and the tail mass.

    A row with fewer than K entries is widened the way promptbake pads top-K
    rows (see :func:`promptbake.scoring.sparse_targets`); an empty row is an error.
    """
    from promptbake import sparse_targets

    if len(rows) != len(sampled_ids):
        raise VLLMResponseError(f"vLLM returned {len(rows)} log-prob rows for {len(sampled_ids)} tokens.")
    best = []
    for r, entries in enumerate(rows):
        row = _best(entries, top_k)
        if not row:
            raise VLLMResponseError(f"vLLM returned no log-probabilities for response position {r}.")
        best.append([(tok, lp) for tok, lp, _ in row])
    return sparse_targets(best, sampled_ids, width=top_k)


def prompt_targets(prompt_logprobs: Any, prefix_len: int, response_ids: Sequence[int], top_k: int) -> Targets:
    """Targets for a response scored as the end of a prompt.

    Response token i sits at prompt position ``prefix_len + i``; vLLM's entry at
    that position is the distribution that predicts it (entry 0, the first prompt
    token, has none). Each entry must contain its actual token, which checks
    that the prompt and the response line up.
    """
    if prompt_logprobs is None:
        raise VLLMResponseError("vLLM returned no prompt log-probabilities; the request must set prompt_logprobs.")
    needed = prefix_len + len(response_ids)
    have = num_positions(prompt_logprobs)
    if have < needed:
        raise VLLMResponseError(
            f"vLLM returned prompt log-probabilities for {have} of {needed} positions, which happens "
            f"when prefix caching skips cached tokens; run vLLM without prefix caching "
            f"(enable_prefix_caching=False, or vllm serve --no-enable-prefix-caching)."
        )
    rows = [entries_at(prompt_logprobs, prefix_len + i) for i in range(len(response_ids))]
    _check_actual(rows, response_ids)
    return topk_targets(rows, response_ids, top_k)


def sample_targets(token_ids: Sequence[int], logprobs: Any, top_k: int) -> Targets:
    """Targets for a generated sample from ``CompletionOutput.logprobs`` (one entry per generated token)."""
    if logprobs is None or num_positions(logprobs) < len(token_ids):
        got = 0 if logprobs is None else num_positions(logprobs)
        raise VLLMResponseError(f"vLLM returned log-probabilities for {got} of {len(token_ids)} generated tokens.")
    rows = [entries_at(logprobs, i) for i in range(len(token_ids))]
    _check_actual(rows, token_ids)
    return topk_targets(rows, token_ids, top_k)


def _check_actual(rows: Sequence[list[Entry]], token_ids: Sequence[int]) -> None:
    for i, (entries, tok) in enumerate(zip(rows, token_ids)):
        if entries and all(e[0] != tok for e in entries):
            raise VLLMResponseError(
                f"vLLM's log-probabilities at response position {i} do not include its token {tok}, "
                f"so they do not line up with the trajectory."
            )


def to_sample(token_ids: Sequence[int], finish_reason: str | None, stop_reason: Any,
              stop_ids: Sequence[int]) -> Sample:
    """A promptbake sample from a vLLM completion: cut after the first stop token, which is kept.

    vLLM appends the stop token before it checks for stops, so finished
    outputs already end with it; it is added when a server left it out.
    """
    tokens = [int(t) for t in token_ids]
    stops = set(stop_ids)
    for i, tok in enumerate(tokens):
        if tok in stops:
            return Sample(token_ids=tokens[: i + 1], finished=True)
    if finish_reason == "stop" and isinstance(stop_reason, int) and not isinstance(stop_reason, bool) \
            and stop_reason in stops:
        return Sample(token_ids=[*tokens, stop_reason], finished=True)
    # "stop" without a listed stop id: the model's own EOS (from its generation config).
    return Sample(token_ids=tokens, finished=finish_reason == "stop")


def request_seed(seed: int, index: int, n: int) -> int:
    """A seed per prompt; vLLM seeds the n samples of a request with seed + j, so these never overlap."""
    return seed * 1_000_003 + index * max(n, 1)
