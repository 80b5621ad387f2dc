"""The openai teacher over several endpoints: two fault proxies in front of one fake API, one killed midway.

The fake API (openai_fakeapi.py) answers on a real port of 127.0.0.1, so the real
openai client, its retries and its connection handling are what is tested; the
proxy (faultproxy.py) resets every connection once it is killed, before anything
reaches the API, so the API's own count of requests per body says whether a
request was lost or sent twice.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
import torch
from faultproxy import FaultProxy
from openai_fakeapi import FakeChatAPI
from promptbake_openai.openai import OpenAITeacher

from promptbake import BackendError, BakeConfig, ConfigError, Prefix, SamplingConfig
from promptbake.builtin import models

PROMPT = "Always respond in French."
QUERIES = 30
SAMPLING = SamplingConfig(n=2, temperature=0.8, top_p=0.95, max_new_tokens=12, seed=7, logprobs=5)
CONCURRENCY = 3


@pytest.fixture
def tokenizer(tiny_model):
    return models.load(tiny_model("smollm2"), "auto", "cpu").tokenizer


def prefixes(n: int = QUERIES) -> list[Prefix]:
    return [Prefix(ids=[], messages=({"role": "system", "content": PROMPT},
                                     {"role": "user", "content": f"What is {i} plus {i + 7}?"}))
            for i in range(n)]


def generate(base_url, cache_dir, tokenizer, **options):
    options = {"concurrency": CONCURRENCY, "max_retries": 1, "timeout": 5.0, **options}
    teacher = OpenAITeacher(model="fake-model", base_url=base_url, cache_dir=str(cache_dir), **options)
    teacher.setup(BakeConfig(prompt=PROMPT, model="fake-model", device="cpu", progress=False))
    teacher.use_student_tokenizer(tokenizer)
    return teacher, teacher.generate(prefixes(), SAMPLING)


def plain(groups) -> list:
    """Samples as comparable data, the teacher's targets included."""
    def tensors(t):
        return {k: v.tolist() for k, v in vars(t).items() if isinstance(v, torch.Tensor)}

    return [[(s.token_ids, s.finished, s.extra, tensors(s.targets)) for s in group] for group in groups]


def per_body(api: FakeChatAPI) -> Counter[str]:
    return Counter(json.dumps(body, sort_keys=True) for body in api.bodies)


def test_a_killed_endpoint_loses_and_duplicates_nothing(tokenizer, tmp_path, caplog):
    requests = QUERIES * SAMPLING.n
    single_api = FakeChatAPI(tokenizer, delay=0.01)
    with single_api.serve() as url:
        _, reference = generate(url, tmp_path / "single", tokenizer)
    assert len(per_body(single_api)) == len(single_api.bodies) == requests

    api = FakeChatAPI(tokenizer, delay=0.01)
    with api.serve() as upstream, FaultProxy(upstream) as a, FaultProxy(upstream, kill_after=12) as b:
        with caplog.at_level(logging.WARNING, logger="promptbake"):
            teacher, got = generate([a.base_url, b.base_url], tmp_path / "several", tokenizer)

        # The same samples, targets included, as from the single endpoint, in the same order.
        assert plain(got) == plain(reference)
        # The API saw every request exactly once: none lost, none sent twice.
        assert per_body(api) == per_body(single_api)
        delivered = a.delivered + b.delivered
        assert len(delivered) == requests and set(delivered.values()) == {1}
        # B died midway: it answered 12, refused what it had in flight then, and got nothing after.
        assert b.report()["delivered"] == 12 and a.report()["delivered"] == requests - 12
        refused = b.report()["refused_dead"]
        assert 1 <= refused <= CONCURRENCY * 2  # each request in flight on it, tried once and retried once
        assert max(a.max_in_flight, b.max_in_flight) <= CONCURRENCY
        down = teacher.pool.endpoints[1]
        assert down.url == b.base_url + "/" and down.down is not None and teacher.pool.endpoints[0].down is None
        assert f"Could not reach {down.url} after 1 retries" in caplog.text
        assert "Its requests go to the other 1 endpoint." in caplog.text
        cached = list((tmp_path / "several").rglob("*.jsonl"))
        assert sum(len(p.read_text().splitlines()) for p in cached) == requests  # each answer stored once

        # A re-run finds every answer in the cache, whichever endpoint gave it; B is dropped at setup.
        _, again = generate([a.base_url, b.base_url], tmp_path / "several", tokenizer)
        assert plain(again) == plain(reference)
        assert len(api.bodies) == requests  # no request sent


def test_every_endpoint_killed_is_one_error_naming_them(tokenizer, tmp_path):
    api = FakeChatAPI(tokenizer)
    with (api.serve() as upstream, FaultProxy(upstream, kill_after=3) as a, FaultProxy(upstream, kill_after=2) as b,
          pytest.raises(BackendError) as info):
        generate([a.base_url, b.base_url], tmp_path / "responses", tokenizer, max_retries=0)
    message = str(info.value)
    assert message.startswith(f"All 2 endpoints stopped answering ({a.base_url}/, {b.base_url}/); "
                              f"the last failure: Could not reach http://127.0.0.1:")
    assert message.endswith("completed responses are kept, so a re-run resumes).")
    assert set(per_body(api).values()) == {1} and len(api.bodies) == 5
    cached = list((tmp_path / "responses").rglob("*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in cached) == 5  # what was answered is kept


def test_endpoints_serving_different_models_are_refused_at_setup(tokenizer, tmp_path):
    with (FakeChatAPI(tokenizer).serve() as one, FakeChatAPI(tokenizer, models=("other-model",)).serve() as other,
          pytest.raises(ConfigError) as info):
        generate([one, other], tmp_path / "responses", tokenizer)
    assert str(info.value) == (
        f"The endpoints in teacher_options.base_url serve different models ({one}/ lists fake-model; "
        f"{other}/ lists other-model); every one must serve model 'fake-model'.")


@pytest.mark.parametrize(("base_url", "fragment"), [
    ([], "is an empty list"),
    (["http://127.0.0.1:8000/v1", "localhost:8001/v1"], "got 'localhost:8001/v1'"),
    (["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/"], "lists http://127.0.0.1:8000/v1 twice"),
])
def test_bad_base_url_lists_are_one_sentence(base_url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        OpenAITeacher(base_url=base_url)
