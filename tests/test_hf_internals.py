"""What promptbake relies on in transformers beyond its stable API (promptbake/hf_internals.py),
each checked here so that a release that moves it fails loudly, not a bake silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import make_tiny_llama, make_tokenizer

from promptbake.builtin import hf_internals

# transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40).
NEW_NAME = tuple(int(x) for x in __import__("transformers").__version__.split(".")[:2]) >= (5, 24)


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(make_tokenizer("smollm2"))


def test_the_cache_goes_in_and_comes_out_under_its_current_name(model):
    ids = torch.tensor([[5, 6, 7, 8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the name chosen raises no deprecation
        out = model(input_ids=ids, use_cache=True)
        cache = hf_internals.output_cache(out)
        more = model(input_ids=torch.tensor([[9]]), **hf_internals.with_cache(model, cache), use_cache=True)
    if NEW_NAME:
        assert hf_internals.cache_kwarg(model) == "cache"  # transformers >= 5.24 renamed it
    keys, values = hf_internals.cache_layer(cache, 0)
    assert keys.shape[2] == values.shape[2] == 5  # the cache was extended in place, not ignored
    assert len(hf_internals.cache_layers(cache)) == model.config.num_hidden_layers
    whole = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[:, -1]
    torch.testing.assert_close(more.logits[:, -1], whole, rtol=1e-4, atol=1e-5)


def test_a_new_cache_continues_a_forward(model):
    cache = hf_internals.new_cache(model)
    model(input_ids=torch.tensor([[5, 6]]), **hf_internals.with_cache(model, cache), use_cache=True)
    assert hf_internals.cache_layer(cache, 0)[0].shape[2] == 2
    for method in ("crop", "batch_repeat_interleave", "batch_select_indices"):  # the DynamicCache API used
        assert callable(getattr(cache, method))


def test_the_attention_implementation_is_read_and_switched(model):
    calls = []

    def counting(module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        calls.append(1)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    assert hf_internals.attn_implementation(model) == "sdpa"
    hf_internals.register_attention("promptbake_test_counting", counting)
    with hf_internals.attention(model, "promptbake_test_counting"):
        assert hf_internals.attn_implementation(model) == "promptbake_test_counting"
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert len(calls) == model.config.num_hidden_layers
    assert hf_internals.attn_implementation(model) == "sdpa"


def test_the_gguf_loader_bar_and_quantizer_are_where_they_were(model):
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    assert hasattr(gguf_loader, "tqdm")  # the bar hide_gguf_loader_bar switches off
    hf_internals.hide_gguf_loader_bar()
    hf_internals.hide_gguf_loader_bar()  # idempotent
    assert gguf_loader.tqdm.keywords == {"disable": True}
    assert hf_internals.gguf_quantizer(model) is None and not hf_internals.weights_still_packed(model)


def test_a_deprecated_call_from_promptbake_fails_its_test(model, monkeypatch):
    """The suite's guard (tests/deprecations.py) sees a deprecation that promptbake's own call raises."""
    if not NEW_NAME:
        pytest.skip("past_key_values is deprecated from transformers 5.24 on: nothing to see before")
    import deprecations

    from promptbake.builtin import scoring
    from promptbake.builtin.prefix_cache import PrefixCache
    from promptbake.core.types import Query
    from promptbake.stages.render import Renderer

    tok = make_tokenizer("smollm2")
    r = Renderer(tok, "You are a pirate who answers every question about the sea. " * 3)
    trajs = [r.from_text(Query(f"q{i}", ({"role": "user", "content": f"Why {i}?"},)), "Arr.", 0) for i in range(2)]
    model.config.model_type = "not-shared"  # the expanded cache goes in as a keyword argument
    monkeypatch.setattr(hf_internals, "cache_kwarg", lambda m: "past_key_values")  # the old name
    try:
        scoring.response_logits(model, trajs, "prompted", tok.pad_token_id, "cpu", PrefixCache())
        assert any("past_key_values" in line and "scoring.py" in line for line in deprecations.found)
    finally:
        model.config.model_type = "llama"
        deprecations.found.clear()
