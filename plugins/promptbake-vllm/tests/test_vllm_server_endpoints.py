"""The ``vllm-server`` teacher over several servers of one model, one of which dies midway.

Both "servers" are the mock ``vllm serve`` (vllm_fakes.FakeServer) behind one httpx
MockTransport; requests to the second one's port start failing with connection
errors after a set number, before they reach the server, so the server's own
record of requests says whether one was lost or sent twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter

import pytest
import torch
from promptbake_vllm.vllm_server import VLLMServerError, VLLMServerTeacher
from vllm_fakes import FakeServer, httpx_module
from vllm_fakes import bake_config as _config
from vllm_fakes import trajectories as _trajectories

from promptbake.core.errors import ConfigError
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix

httpx = httpx_module()
A, B = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"


class Dying:
    """Routes every request to ``server``; the port ``port`` refuses connections after ``after`` POSTs."""

    def __init__(self, server: FakeServer, port: int = 8001, after: int | None = None, gets: bool = True):
        self.server, self.port, self.after, self.gets = server, port, after, gets
        self.lock = threading.Lock()
        self.posts = Counter()  # per port
        self.refused = 0

    def __call__(self, request):
        port = request.url.port
        with self.lock:
            if request.method == "POST":
                self.posts[port] += 1
            dead = port == self.port and ((request.method == "GET" and not self.gets) or (
                request.method == "POST" and self.after is not None and self.posts[port] > self.after))
            self.refused += dead
        if dead:
            raise httpx.ConnectError("connection refused", request=request)
        return self.server.handle_request(request)


def teacher(spec: str, route, base_url=(A, B), **options) -> VLLMServerTeacher:
    options = {"max_retries": 1, "timeout": 5, "concurrency": 2, **options}
    t = VLLMServerTeacher(base_url=list(base_url), http_client=httpx.Client(transport=httpx.MockTransport(route)),
                          **options)
    t.setup(_config(spec, top_k=8))
    return t


def per_prompt(server: FakeServer) -> Counter[str]:
    return Counter(json.dumps(body, sort_keys=True) for body in server.requests)


def test_scoring_survives_a_dead_server_with_nothing_lost_or_duplicated(tiny_model, caplog):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 12)
    single = FakeServer(httpx, spec)
    reference = teacher(spec, single.handle_request, base_url=[A]).score(trajs, top_k=8, full=False)

    server = FakeServer(httpx, spec)
    route = Dying(server, after=3)
    several = teacher(spec, route)
    with caplog.at_level(logging.WARNING, logger="promptbake"):
        got = several.score(trajs, top_k=8, full=False)
    assert len(got) == len(reference) == 12
    for g, w in zip(got, reference):  # in order, and the same whichever server answered
        for name in ("sampled_ids", "topk_ids", "topk_logprobs", "tail_logprob"):
            assert torch.equal(getattr(g, name), getattr(w, name))
    assert per_prompt(server) == per_prompt(single)  # each request reached a server exactly once
    assert route.refused >= 1 and several.pool.endpoints[1].down is not None
    assert several.pool.endpoints[1].answered == 3 and several.pool.endpoints[0].answered == 9
    assert f"Could not reach a vLLM server at {B} after 1 retries" in caplog.text


def test_generation_over_two_servers_matches_one(tiny_model):
    spec = tiny_model()
    trajs, renderer = _trajectories(spec, 6)
    prefixes = [Prefix(ids=t.prompted_ids[: t.prompted_prefix_len], messages=()) for t in trajs]
    sampling = SamplingConfig(n=2, temperature=0.8, top_p=0.95, max_new_tokens=6, seed=5, stop_ids=renderer.stop_ids)
    single = FakeServer(httpx, spec)
    reference = teacher(spec, single.handle_request, base_url=[A]).generate(prefixes, sampling)
    server = FakeServer(httpx, spec)
    got = teacher(spec, Dying(server, after=2)).generate(prefixes, sampling)
    assert [[(s.token_ids, s.finished) for s in g] for g in got] == \
        [[(s.token_ids, s.finished) for s in g] for g in reference]
    assert per_prompt(server) == per_prompt(single)


def test_a_server_down_at_setup_is_dropped_and_all_down_names_them(tiny_model, caplog):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 3)
    server = FakeServer(httpx, spec)
    with caplog.at_level(logging.WARNING, logger="promptbake"):
        t = teacher(spec, Dying(server, gets=False, after=0))
    assert [e.url for e in t.pool.alive] == [A] and "Its requests go to the other 1 endpoint." in caplog.text
    assert len(t.score(trajs, top_k=8, full=False)) == 3

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(VLLMServerError) as info:
        teacher(spec, refuse, max_retries=0)
    assert str(info.value) == (f"All 2 endpoints stopped answering ({A}, {B}); the last failure: Could not reach "
                               f"a vLLM server at {B} after 0 retries; start one with 'vllm serve MODEL' or set "
                               f"teacher_options.base_url.")


def test_a_server_of_another_model_is_refused_at_setup(tiny_model):
    spec, other = tiny_model(), tiny_model(seed=1)
    one, two = FakeServer(httpx, spec), FakeServer(httpx, other)

    def route(request):
        return (two if request.url.port == 8001 else one).handle_request(request)

    with pytest.raises(VLLMServerError) as info:
        teacher(spec, route)
    assert str(info.value) == (f"The vLLM server at {B} serves {other}, not '{spec}'; set teacher_options.model to "
                               f"one of those (every base_url must serve the same model).")


@pytest.mark.parametrize(("options", "fragment"), [
    ({"base_url": []}, "teacher_options.base_url is an empty list"),
    ({"base_url": [A, "127.0.0.1:8001"]}, "got '127.0.0.1:8001'"),
    ({"base_url": [A, A]}, f"lists {A} twice"),
    ({"base_url": [A, B], "client": object()}, "teacher_options.client is one server's client"),
])
def test_bad_server_lists_are_one_sentence(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        VLLMServerTeacher(**options)
