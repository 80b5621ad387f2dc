"""The model-family matrix: each family promptbake is used with, as a tiny random model of the
family's real config class (its quirks on) with the family's real chat template and tokens
(``families.py``). Per family: the alignment contract and stop ids, scoring on every path
against ``model(...).logits``, greedy decoding on every path against ``model.generate`` under
the same processors, and a short bake that lowers the held-out KL. Plus a cross-size pair
whose models pad their vocabularies differently. docs/models.md is this file as a table.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from families import FAMILIES, FAMILY_NAMES, make_family_model, make_family_tokenizer
from helpers import chat_ids, registered

from promptbake import Baker, SamplingConfig
from promptbake.builtin import models, scoring
from promptbake.builtin.prefix_cache import PrefixCache, supports_shared_prefix
from promptbake.builtin.sampling import bare_generation_config, sample_rows
from promptbake.builtin.scoring import response_logits, score_targets, split_head
from promptbake.core import decoding
from promptbake.core.types import Query
from promptbake.stages.render import Renderer, check_alignment

PROMPT = "You are a pirate captain. Always answer like a pirate, matey, and never break character."
QUESTIONS = ["What is rain?", "Tell me about the sea.", "Why is the sky blue? Explain it to me."]
REPLIES = ["Arr, water from the sky.", "The sea is wide and deep, matey!", "Aye."]
# Families whose logits are more than the output layer applied to the last hidden states.
WHOLE = {"gemma2": "final_logit_softcapping", "granite3": "logits_scaling"}
# Families scored and sampled with shared-prefix attention (the others: sliding windows, soft-capping).
SHARED = {"llama3", "qwen2.5", "qwen3", "granite3", "olmo2", "smollm3", "llama2"}
# Templates that place the system prompt by the last user message (Mistral v0.3): a finished
# conversation renders without it, so only the unprompted prefix is a prefix of that rendering.
SYSTEM_BY_LAST_USER = {"mistral"}
VARIANTS = [(name, variant) for name in FAMILY_NAMES for variant in FAMILIES[name].template_variants]


@functools.cache
def built(name: str):
    """The family's tokenizer and tiny model, shared by the tests that do not train it."""
    tokenizer = make_family_tokenizer(name)
    models.ensure_pad(tokenizer)
    return tokenizer, make_family_model(name, tokenizer)


def renderer(name: str, tokenizer, model, kwargs=None) -> Renderer:
    fam = FAMILIES[name]
    return Renderer(tokenizer, PROMPT, 4096, decoding.eos_ids(model.generation_config),
                    fam.template_kwargs if kwargs is None else kwargs)


def queries() -> list[Query]:
    return [Query(f"q{i}", ({"role": "user", "content": q},)) for i, q in enumerate(QUESTIONS)]


def trajectories(r: Renderer):
    return [r.from_text(q, text, 0) for q, text in zip(queries(), REPLIES)]


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_alignment_contract_and_stop_ids(name, variant):
    fam = FAMILIES[name]
    tokenizer, model = built(name)
    kwargs = {**fam.template_kwargs, **fam.template_variants[variant]}
    r = renderer(name, tokenizer, model, kwargs)
    eot = tokenizer.convert_tokens_to_ids(fam.end_of_turn)
    assert r.eot_id == eot, tokenizer.convert_ids_to_tokens([r.eot_id])
    wanted = {eot, tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(fam.generation_eos))}
    assert wanted <= set(r.stop_ids)
    assert r.system_role == fam.system_role
    for q, text in zip(queries(), REPLIES):
        prompted, unprompted = r.prefix(q, True), r.prefix(q, False)
        assert PROMPT in tokenizer.decode(prompted) and "pirate captain" not in tokenizer.decode(unprompted)
        traj = r.from_text(q, text)
        check_alignment(traj)
        assert traj.response_ids[-1] == eot and traj.finished
        # A response stopped by any stop id ends with the end-of-turn token, as the template renders it.
        for stop in r.stop_ids:
            assert r.trajectory(q, [*tokenizer(text, add_special_tokens=False)["input_ids"], stop]).response_ids[-1] == eot
        # The rendered generation prompt is where the template's own rendering of the finished
        # conversation continues with the reply.
        for prompted_side, prefix in ((True, prompted), (False, unprompted)):
            if prompted_side and name in SYSTEM_BY_LAST_USER:
                continue
            full = chat_ids(tokenizer, [*r.messages(q, prompted_side), {"role": "assistant", "content": text}],
                            **kwargs)
            assert full[: len(prefix)] == prefix


def _reference(model, trajs, vocab):
    """log-softmax of ``model(...).logits`` at each response row, over the tokenizer's vocabulary."""
    out = []
    for t in trajs:
        logits = model(input_ids=torch.tensor([t.prompted_ids])).logits[0, :, :vocab].float()
        p = t.prompted_prefix_len
        out.append(torch.log_softmax(logits[p - 1: p - 1 + t.response_len], -1))
    return torch.cat(out)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_scoring_on_every_path_equals_the_models_logits(name, monkeypatch):
    tokenizer, model = built(name)
    trajs = trajectories(renderer(name, tokenizer, model))
    vocab = models.vocab_size(model, tokenizer)
    assert vocab == len(tokenizer)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        ref = _reference(model, trajs, vocab)

        def check(logits):
            torch.testing.assert_close(torch.log_softmax(logits.float(), -1), ref, rtol=1e-4, atol=1e-4)

        assert (split_head(model) is None) == (name in WHOLE)
        if name not in WHOLE:  # the split path: response rows' hidden states, then the output layer
            check(response_logits(model, trajs, "prompted", pad, "cpu", vocab=vocab)[0])
        # Targets, the output layer taken a few rows at a time (the chunked head).
        monkeypatch.setattr(scoring, "SCORE_ROWS", 5)
        got = score_targets(model, trajs, "prompted", pad, "cpu", top_k=4, full=True, vocab=vocab)
        torch.testing.assert_close(torch.cat([t.full_logprobs for t in got]), ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(torch.cat([t.topk_ids for t in got]).long(), ref.topk(4, -1).indices)
        # The system prompt's KV computed once: shared-prefix attention, or an expanded copy.
        assert supports_shared_prefix(model) == (name in SHARED)
        check(response_logits(model, trajs, "prompted", pad, "cpu", PrefixCache(), vocab=vocab)[0])
        monkeypatch.setattr(scoring, "split_head", lambda *a: None)  # the whole model
        check(response_logits(model, trajs, "prompted", pad, "cpu", vocab=vocab)[0])


def _hf_generate(model, ids, sampling, vocab, own_config):
    """One row through ``model.generate`` itself: with the model's own generation_config (whose
    extras transformers applies) or a bare one, plus the padding rows suppressed."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        SuppressTokensLogitsProcessor,
    )

    rows = model.get_output_embeddings().weight.shape[0]
    extra = LogitsProcessorList([SuppressTokensLogitsProcessor(list(range(vocab, rows)))] if rows > vocab else [])
    x = torch.tensor([ids])
    kwargs = {"input_ids": x, "attention_mask": torch.ones_like(x), "do_sample": False, "max_new_tokens": sampling.max_new_tokens,
                  "min_new_tokens": sampling.min_new_tokens, "eos_token_id": list(sampling.stop_ids),
                  "pad_token_id": model.generation_config.pad_token_id, "logits_processor": extra}
    if own_config:
        out = model.generate(**kwargs)
    else:
        with bare_generation_config(model):
            out = model.generate(**kwargs)
    new = out[0, x.shape[1]:].tolist()
    stop = next((i for i, t in enumerate(new) if t in sampling.stop_ids), None)
    return new if stop is None else new[: stop + 1]


@pytest.mark.parametrize("extras", [False, True], ids=["plain", "generation_config"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_greedy_decoding_on_every_path_equals_generate(name, extras):
    tokenizer, model = built(name)
    r = renderer(name, tokenizer, model)
    vocab = models.vocab_size(model, tokenizer)
    found = decoding.extras(model.generation_config) if extras else {}
    sampling = SamplingConfig(n=1, temperature=0.0, max_new_tokens=8, min_new_tokens=2, stop_ids=list(r.stop_ids),
                              extras=found)
    prefixes = [r.prefix(q, True) for q in queries()]
    with torch.no_grad():
        # The reference: transformers' generate, one row at a time, with the model's generation_config
        # when its extras are asked for, else none of it.
        want = [_hf_generate(model, p, sampling, vocab, own_config=extras) for p in prefixes]
        batched = sample_rows(model, prefixes, sampling, tokenizer.pad_token_id, "cpu", batch_size=8, vocab=vocab)
        cached = sample_rows(model, prefixes, sampling, tokenizer.pad_token_id, "cpu", batch_size=8,
                             prefix=PrefixCache(), vocab=vocab)
        # Two rows a prefix: one prefill of it, its KV repeated (model.generate's path and shared-prefix decoding's).
        twice = dataclasses.replace(sampling, n=2)
        pairs = [sample_rows(model, prefixes, twice, tokenizer.pad_token_id, "cpu", batch_size=8, prefix=cache,
                             vocab=vocab) for cache in (None, PrefixCache())]
    assert [g[0].token_ids for g in batched] == want
    assert [g[0].token_ids for g in cached] == want
    for pair in pairs:
        assert [[s.token_ids for s in g] for g in pair] == [[w, w] for w in want]


def test_the_generation_config_extras_of_each_family():
    """What generation_config=true applies, read from each family's real generation_config.json."""
    found = {name: decoding.extras(built(name)[1].generation_config) for name in FAMILY_NAMES}
    assert found["qwen2.5"] == {"repetition_penalty": 1.05, "top_k": 20}
    assert found["qwen3"] == {"top_k": 20} and found["gemma3"] == {"top_k": 64}
    assert all(not v for k, v in found.items() if k not in ("qwen2.5", "qwen3", "gemma3"))


# For the bake only: where a tiny random model barely hears the system prompt, the held-out gap is
# rounding noise. Mistral's and Gemma-3's 16-token windows (kept small above so that windowing
# happens on short test inputs) hide the prompt from the response; SmolLM3's long default system
# block dilutes it under near-uniform random attention.
BAKE_OVERRIDES = {"mistral": {"sliding_window": 256}, "gemma3": {"sliding_window": 256},
                  "smollm3": {"initializer_range": 0.2}}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_short_bake_lowers_heldout_kl(name, tmp_path):
    fam = FAMILIES[name]
    tokenizer = make_family_tokenizer(name)
    models.ensure_pad(tokenizer)
    model = make_family_model(name, tokenizer, seed=1, **BAKE_OVERRIDES.get(name, {}))
    spec = f"family-{name}-bake"
    with registered(spec, model, tokenizer):
        result = Baker(PROMPT, model=spec, max_queries=8, max_heldout=4, samples_per_query=2, max_new_tokens=10,
                       epochs=3, batch_size=4, lr=3e-3, out=str(tmp_path / "run"), progress=False, device="cpu",
                       chat_template_kwargs=fam.template_kwargs).run()
    e = result.eval
    assert e["kl_prompted_baked"] < 0.9 * e["kl_prompted_base"], e
    loss = json.loads((result.run_dir / "config.json").read_text())["loss"]
    # The default: the exact full_kl where targets travel as hidden states, else top-K.
    assert loss == ("topk_kl" if name in WHOLE else "full_kl")


def test_a_cross_size_pair_with_padded_vocabularies(tmp_path):
    """A larger teacher and a smaller student of one family and tokenizer whose output layers pad the
    vocabulary differently (Qwen2.5-7B 152,064 rows, 0.5B 151,936, for 151,665 tokens): full_kl trains
    and evaluates over the tokenizer's vocabulary, and "base" is the student's own model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_family_tokenizer("qwen2.5")
    specs = {}
    for who, (width, rows) in {"teacher": (64, len(tokenizer) + 128), "student": (32, len(tokenizer) + 64)}.items():
        config = Qwen2Config(vocab_size=rows, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(len(who))
        model = Qwen2ForCausalLM(config).eval()
        specs[who] = (f"qwen-{who}-{width}", model)
    settings = {"max_queries": 8, "max_heldout": 4, "samples_per_query": 2, "max_new_tokens": 10, "epochs": 3, "batch_size": 4,
                    "progress": False, "device": "cpu", "model": specs["student"][0], "teacher_model": specs["teacher"][0],
                    "loss": "full_kl", "probe_samples": 0}
    with registered(*specs["teacher"], make_family_tokenizer("qwen2.5")), \
            registered(*specs["student"], make_family_tokenizer("qwen2.5")):
        trained = Baker(PROMPT, lr=3e-3, out=str(tmp_path / "a"), **settings).run().eval
        untrained = Baker(PROMPT, lr=1e-12, out=str(tmp_path / "b"), **settings).run().eval
    assert trained["kl_prompted_baked"] < trained["kl_prompted_base"]
    # An untrained student closes nothing of its own gap (with the teacher's model as "base" it
    # scored about -60 here: the teacher without the prompt is far closer to the teacher).
    assert abs(untrained["gap_closed"]) < 1e-3, untrained["gap_closed"]
    assert trained["kl_prompted_base"] == pytest.approx(untrained["kl_prompted_base"], rel=1e-5)
