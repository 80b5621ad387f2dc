"""Mapping API tokens (text or bytes) to the student's ids: exact where possible, never shifted."""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import make_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptbake_openai.tokenmap import Piece, TokenMap, surface_bytes

STOP = 2


@pytest.fixture(scope="module")
def tm() -> TokenMap:
    return TokenMap(make_tokenizer("smollm2"))


def teacher_pieces(tm: TokenMap, ids: list[int], lossy: bool = False, top: int = 3) -> list[Piece]:
    """Pieces as an API returns them for ``ids``: text (lossy like llama.cpp) or exact bytes (OpenAI)."""
    out = []
    for i in ids:
        raw = tm.bytes_of[i]
        entries = [(raw.decode("utf-8", "ignore"), None if lossy else raw, -0.5)]
        entries += [("zz" * (k + 1), None, -3.0 - k) for k in range(top - 1)]
        out.append(Piece(token=raw.decode("utf-8", "ignore"), bytes=None if lossy else raw, logprob=-0.5, top=entries))
    return out


def test_surface_bytes_spell_the_text(tm):
    text = "Bonjour, ça va? Très bien 🙂"
    ids = tm.encode(text)
    assert b"".join(tm.bytes_of[i] for i in ids) == text.encode()
    special = surface_bytes(tm.tokenizer)
    assert special[tm.tokenizer.convert_tokens_to_ids("<|im_end|>")] == b"<|im_end|>"


def test_canonical_response_maps_exactly(tm):
    text = "The capital of France is Paris."
    ids = tm.encode(text)
    m = tm.map(teacher_pieces(tm, ids), text, finished=True, stop_id=STOP)
    assert m.ids == ids + [STOP]
    assert m.canonical
    # Every generated row keeps its target; the end-of-turn row has none (APIs omit it).
    assert m.weight == [1.0] * len(ids) + [0.0]
    targets = m.targets()
    assert targets.topk_ids.shape[0] == len(ids) + 1
    assert targets.topk_ids[0, 0].item() == ids[0]


def test_non_canonical_segmentation_follows_the_teacher(tm):
    """The teacher conditioned on its own tokens, so those are the response, not the re-tokenisation."""
    text = "international"
    canonical = tm.encode(text)
    split = [i for ch in text for i in tm.encode(ch)]  # one token per character
    assert split != canonical
    m = tm.map(teacher_pieces(tm, split), text, finished=False, stop_id=STOP)
    assert m.ids == split
    assert not m.canonical
    assert all(w == 1.0 for w in m.weight)


def test_lossy_partial_utf8_is_excluded_not_shifted(tm):
    """llama.cpp returns a partial UTF-8 token as text with the bytes dropped."""
    text = "der ökologie"
    data = text.encode()
    # The teacher splits "ö" (2 bytes) into two single-byte tokens.
    ids = []
    for b in data:
        ids.append(tm.lookup(bytes([b])))
    assert None not in ids
    m = tm.map(teacher_pieces(tm, ids, lossy=True), text, finished=False, stop_id=STOP)
    assert tm.tokenizer.decode(m.ids) == text
    for r, w in enumerate(m.weight):
        if w:
            assert m.ids[:r] == ids[:r], f"row {r} kept a target computed for another context"
    assert 0 < sum(m.weight) < len(m.weight)


def test_ambiguous_and_unknown_entries_join_the_tail(tm):
    text = "ok"
    ids = tm.encode(text)
    pieces = [Piece(token="ok", logprob=-0.1, top=[("ok", None, -0.1), ("nope-not-a-token", None, -2.5), ("", None, -3.0)])]
    pieces = pieces if len(ids) == 1 else teacher_pieces(tm, ids)
    m = tm.map(pieces, text, finished=False, stop_id=STOP)
    t = m.targets()
    kept = t.topk_logprobs[0][torch.isfinite(t.topk_logprobs[0])]
    assert math.isclose(float(t.tail_logprob[0]), math.log1p(-float(kept.exp().sum())), rel_tol=1e-5)
    assert m.entries_mapped < m.entries


def test_top_k_summing_to_one_gives_an_empty_tail_not_nan(tm):
    ids = tm.encode("a")
    # Rounded log-probs can sum past 1 (p = 1.0 and 0.99 here).
    piece = Piece(token="a", logprob=0.0, top=[("a", None, 0.0), ("b", None, -0.01)])
    t = tm.map([piece] * len(ids), "a", finished=False, stop_id=STOP).targets()
    assert not torch.isnan(t.tail_logprob).any()
    assert t.tail_logprob[0] < math.log(1e-6)  # an empty tail (log1mexp stops at 1e-7)


def test_text_only_mapping_for_ce(tm):
    text = "Hello there"
    m = tm.map([], text, finished=True, stop_id=STOP, with_targets=False)
    assert m.ids == tm.encode(text) + [STOP]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24),
       seed=st.integers(0, 10_000), lossy=st.booleans(), finished=st.booleans())
def test_property_kept_rows_have_the_teachers_context(tm, text, seed, lossy, finished):
    """Any segmentation of any text, with or without lossy pieces: a kept row's context is exact."""
    data = text.encode()
    rng = random.Random(seed)
    ids, cursor = [], 0
    while cursor < len(data):  # a random segmentation into vocabulary tokens
        options = [n for n in range(1, min(8, len(data) - cursor) + 1) if tm.lookup(data[cursor:cursor + n]) is not None]
        n = rng.choice(options)
        ids.append(tm.lookup(data[cursor:cursor + n]))
        cursor += n
    m = tm.map(teacher_pieces(tm, ids, lossy=lossy), text, finished=finished, stop_id=STOP)
    body = m.ids[:-1] if finished else m.ids
    assert tm.tokenizer.decode(body) == text or b"".join(tm.bytes_of[i] for i in body) == data
    for r, w in enumerate(m.weight):
        if w:
            assert r < len(ids) and m.ids[:r] == ids[:r]
    if not lossy:
        assert m.ids[: len(ids)] == ids and all(m.weight[: len(ids)])
