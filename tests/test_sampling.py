"""Sampling from a local model: shared-prefix decoding against ``model.generate``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_tiny_llama, make_tiny_qwen3, make_tokenizer

import promptbake.builtin.sampling as sampling_mod
from promptbake.builtin.prefix_cache import PrefixCache
from promptbake.builtin.sampling import sample_rows
from promptbake.core import decoding
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Query
from promptbake.stages.render import Renderer

PROMPT = "You are a pirate who answers every question about the sea. " * 4


def _prefixes(tok, n=5):
    r = Renderer(tok, PROMPT)
    # Questions of different lengths: the rows' own parts are left-padded in one batch.
    return [r.prefix(Query(f"q{i}", ({"role": "user", "content": "Why is the sea so wide? " * (i + 1)},)), True)
            for i in range(n)]


def _tokens(samples):
    return [[s.token_ids for s in group] for group in samples]


def _plain(model, tok, prefixes, sampling, batch_size=6):
    """``model.generate`` over whole rows: no prefix cache at all."""
    return _tokens(sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", batch_size))


def _spy_on_copies(monkeypatch):
    monkeypatch.setattr(PrefixCache, "expand", lambda self, n: pytest.fail("prefix copied per row"))
    monkeypatch.setattr(sampling_mod, "_generate", lambda *a, **k: pytest.fail("model.generate used"))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_shared_prefix_decoding_gives_generates_greedy_tokens(arch, monkeypatch):
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok) if arch == "llama" else make_tiny_qwen3(tok)
    prefixes = _prefixes(tok)
    greedy = SamplingConfig(n=2, temperature=0, max_new_tokens=12, min_new_tokens=1)
    free = _plain(model, tok, prefixes, greedy)
    # A token some rows produce after their first and others never do: a stop id, so
    # rows finish at different steps and leave the batch (a first token cannot stop).
    rows = [t for group in free for t in group]
    stop = next(tok_id for row in rows for tok_id in row[1:]
                if any(tok_id not in other for other in rows) and all(other[0] != tok_id for other in rows))
    sampling = SamplingConfig(n=2, temperature=0, max_new_tokens=12, min_new_tokens=1, stop_ids=[stop])
    expected = _plain(model, tok, prefixes, sampling)
    lengths = [len(t) for group in expected for t in group]
    assert min(lengths) < 12 and max(lengths) == 12  # some stopped early, some ran to the limit

    from transformers import DynamicCache

    selected = []
    select = DynamicCache.batch_select_indices
    monkeypatch.setattr(DynamicCache, "batch_select_indices",
                        lambda self, idx: selected.append(len(idx)) or select(self, idx))
    _spy_on_copies(monkeypatch)
    cache = PrefixCache()
    got = _tokens(sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 6, cache))
    assert len(cache.ids) > 40  # the system prompt came from the cache
    assert got == expected
    assert selected  # finished rows left the batch
    assert model.config._attn_implementation == "sdpa"  # restored after decoding


def test_min_new_tokens_holds_back_the_stop_ids(monkeypatch):
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    prefixes = _prefixes(tok, 2)
    first = _plain(model, tok, prefixes, SamplingConfig(n=1, temperature=0, max_new_tokens=1))
    stop = first[0][0][0]  # what the first row would say first
    sampling = SamplingConfig(n=1, temperature=0, max_new_tokens=5, min_new_tokens=3, stop_ids=[stop])
    expected = _plain(model, tok, prefixes, sampling)
    _spy_on_copies(monkeypatch)
    got = _tokens(sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 6, PrefixCache()))
    assert got == expected
    assert stop not in got[0][0][:3]


def test_sampling_is_seeded_and_follows_top_p(monkeypatch):
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    prefixes = _prefixes(tok, 3)
    _spy_on_copies(monkeypatch)

    def run(**kw):
        sampling = SamplingConfig(**{"n": 2, "temperature": 1.0, "max_new_tokens": 8, "min_new_tokens": 8, **kw})
        return _tokens(sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 6, PrefixCache()))

    first = run(seed=3)
    assert run(seed=3) == first
    assert run(seed=4) != first
    assert first[0][0] != first[0][1]  # a prefix's rows sample apart from their shared prefill
    greedy = run(temperature=0)
    # A nucleus this small holds only the most likely token; a temperature this low, the same.
    assert run(seed=5, top_p=1e-9) == greedy
    assert run(seed=6, temperature=1e-5) == greedy


def test_rows_without_a_shared_prefix_use_generate(monkeypatch):
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    prefixes = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]
    calls = []
    generate = sampling_mod._generate
    monkeypatch.setattr(sampling_mod, "_generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    sampling = SamplingConfig(n=1, temperature=0, max_new_tokens=4)
    sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 6, PrefixCache())
    assert calls == [1]


def test_every_path_samples_through_the_same_processors(monkeypatch):
    """A model whose generation_config ships a repetition penalty (Qwen2.5-Instruct: 1.05):
    model.generate would apply it and shared-prefix decoding would not, so the prompted teacher and
    the students sampled different distributions. Neither applies it unless asked."""
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8, min_new_tokens=8, stop_ids=[tok.eos_token_id])
    # Prompts that already hold the tokens the model would say next, so a penalty on them tells.
    prefixes = [p + g[0].token_ids for p, g in zip(_prefixes(tok, 4), sample_rows(
        model, _prefixes(tok, 4), greedy, tok.pad_token_id, "cpu", batch_size=8))]
    model.generation_config.repetition_penalty = 3.0
    shared = sample_rows(model, prefixes, greedy, tok.pad_token_id, "cpu", batch_size=8, prefix=PrefixCache())
    plain = sample_rows(model, prefixes, greedy, tok.pad_token_id, "cpu", batch_size=8)
    assert _tokens(shared) == _tokens(plain)
    # model.generate left to itself applies the penalty: another distribution.
    x = torch.tensor([prefixes[0]])
    own = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=8,
                         min_new_tokens=8, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    own = own[0, x.shape[1]:].tolist()
    assert _tokens(plain)[0][0] != own
    # Asked for (generation_config=true), the model's extras apply on both paths alike.
    asked = dataclasses.replace(greedy, extras=decoding.extras(model.generation_config))
    for cache in (PrefixCache(), None):
        got = sample_rows(model, prefixes[:1], asked, tok.pad_token_id, "cpu", batch_size=8, prefix=cache)
        assert _tokens(got)[0][0] == own


@pytest.mark.parametrize("cached", [False, True], ids=["own rows", "behind a cached prompt"])
def test_generate_runs_each_prefix_once_for_its_n_rows(cached, monkeypatch):
    """``n`` samples of a prefix through model.generate share one prefill of it (the students'
    sampled answers, and the teacher on models without shared-prefix attention), and sample
    exactly what generate over ``n`` copies of every row does."""
    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    monkeypatch.setattr(sampling_mod, "supports_shared_prefix", lambda m: False)  # generate, even with a cache
    prefixes = _prefixes(tok, 3)  # own parts of different lengths: left-padded
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, min_new_tokens=6, seed=7)
    rows = [p for p in prefixes for _ in range(sampling.n)]
    ids, real = sampling_mod._left_padded(rows, tok.pad_token_id)
    torch.manual_seed(sampling.seed * 100003)  # sample_rows' seed of its first batch
    with sampling_mod.bare_generation_config(model), torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=real.long(), max_new_tokens=6, do_sample=True,
                              temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                              logits_processor=sampling_mod.processors(sampling, ids.shape[1], model.config.vocab_size))
    want = want[:, ids.shape[1]:].tolist()
    widths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[0]) if kwargs["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        got = _tokens(sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 9,
                                  PrefixCache() if cached else None))
    finally:
        hook.remove()
    assert [row for group in got for row in group] == want
    assert widths[-1] == len(prefixes)  # the prefill: one row per prefix, not per sample


def test_draw_samples_the_softmax_and_never_a_masked_token():
    """decode_shared's sampler (inverse CDF at one uniform per row) draws each token at its
    softmax probability, never one whose score is -inf, and repeats itself for a seed."""
    scores = torch.tensor([2.0, 0.5, float("-inf"), -1.0, 1.0, -8.0])
    probs = scores.softmax(-1)
    rows = 200_000
    drawn = sampling_mod.draw(scores.expand(rows, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=len(scores)).double()
    assert counts[2] == 0
    sigma = (rows * probs * (1 - probs)).double().sqrt()
    assert ((counts - rows * probs.double()).abs() <= 5 * sigma + 1).all(), (counts / rows, probs)
    again = sampling_mod.draw(scores.expand(rows, -1), torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    # One likely token among many unlikely ones, and rows of other distributions side by side.
    peaked = torch.full((2, 49152), -30.0)
    peaked[0, 7], peaked[1, 49151] = 10.0, 10.0
    assert sampling_mod.draw(peaked, torch.Generator().manual_seed(1)).tolist() == [7, 49151]


@pytest.mark.parametrize("cached", [True, False], ids=["shared-prefix decoding", "model.generate"])
def test_bf16_decoding_takes_every_product_in_bfloat16_and_leaves_the_prompt_cache_as_loaded(
        cached, monkeypatch):
    """``generate_bf16``: every linear product of the decoding forwards comes from a bfloat16
    copy of the frozen weight, while the system prompt's KV (which scoring shares) is computed
    from the float32 weights; afterwards the layers and weights are as they were."""
    from promptbake.builtin import prefix_cache

    tok = make_tokenizer("smollm2")
    model = make_tiny_llama(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prefixes = _prefixes(tok)
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, min_new_tokens=1, seed=3)
    if not cached:  # the path of families without shared-prefix attention
        monkeypatch.setattr(sampling_mod, "supports_shared_prefix", lambda m: False)
    products: dict[str, set[torch.dtype]] = {"prompt": set(), "decoding": set()}
    where = ["decoding"]

    def as_loaded(fn):  # the prompt's KV, and the shared-prefix check against the model's own logits
        def run(*args, **kwargs):
            where.append("prompt")
            try:
                return fn(*args, **kwargs)
            finally:
                where.pop()
        return run

    linear = torch.nn.functional.linear
    monkeypatch.setattr(prefix_cache.PrefixCache, "usable", as_loaded(prefix_cache.PrefixCache.usable))
    monkeypatch.setattr(prefix_cache, "_matches_on_probe", as_loaded(prefix_cache._matches_on_probe))
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: products[where[-1]].add(w.dtype) or linear(x, w, b))
    cache = PrefixCache()
    got = sample_rows(model, prefixes, sampling, tok.pad_token_id, "cpu", 6, cache, bf16=True)
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    assert products == {"prompt": {torch.float32}, "decoding": {torch.bfloat16}}
    assert len(got) == len(prefixes) and all(len(g) == 2 and g[0].token_ids for g in got)
    # The prompt's KV is what the float32 model gives: scoring reads it as if no bf16 decoding ran.
    fresh = PrefixCache()
    fresh.usable(model, [p for p in prefixes], len(cache.ids), "cpu")
    assert fresh.ids == cache.ids
    for layer in range(model.config.num_hidden_layers):
        for mine, theirs in zip(cache.layer(layer), fresh.layer(layer)):
            assert mine.dtype == torch.float32 and torch.equal(mine, theirs)
    assert not any("forward" in vars(m) for m in model.modules())  # the class's forward again
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # The same distribution up to bfloat16 rounding: greedy tokens as float32's on most rows.
    greedy = dataclasses.replace(sampling, temperature=0.0, n=1)
    low = _tokens(sample_rows(model, prefixes, greedy, tok.pad_token_id, "cpu", 6, PrefixCache(), bf16=True))
    plain = _tokens(sample_rows(model, prefixes, greedy, tok.pad_token_id, "cpu", 6, PrefixCache()))
    assert sum(a[0][0] == b[0][0] for a, b in zip(low, plain)) >= len(prefixes) - 1
