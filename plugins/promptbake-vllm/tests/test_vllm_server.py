"""The ``vllm-server`` teacher against a mock ``vllm serve`` (an httpx MockTransport over a tiny model)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from promptbake_vllm.convert import VLLMResponseError
from promptbake_vllm.vllm_server import VLLMServerError, VLLMServerTeacher
from vllm_fakes import FakeServer, httpx_module
from vllm_fakes import bake_config as _config
from vllm_fakes import trajectories as _trajectories

from promptbake.builtin.hf import HFTeacher
from promptbake.core.errors import CapabilityError, ConfigError
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix

httpx = httpx_module()
KEY = "sk-test-a1b2c3-SECRET"


def _teacher(server: FakeServer, top_k: int = 8, **options) -> VLLMServerTeacher:
    options.setdefault("max_retries", 2)
    teacher = VLLMServerTeacher(http_client=httpx.Client(transport=server.transport()), timeout=5, **options)
    teacher.setup(_config(server.model_name, top_k=top_k))
    return teacher


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


@pytest.mark.parametrize("side", ["prompted", "unprompted"])
def test_scoring_matches_the_hf_teacher(tiny_model, side):
    spec = tiny_model()
    trajs, _ = _trajectories(spec)
    server = FakeServer(httpx, spec)
    got = _teacher(server).score(trajs, top_k=8, full=False, side=side)
    hf = HFTeacher()
    hf.setup(_config(spec, top_k=8))
    for g, w in zip(got, hf.score(trajs, top_k=8, full=False, side=side)):
        assert torch.equal(g.topk_ids, w.topk_ids) and torch.equal(g.sampled_ids, w.sampled_ids)
        torch.testing.assert_close(g.topk_logprobs, w.topk_logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(g.tail_logprob, w.tail_logprob, rtol=1e-5, atol=1e-5)
    ids = trajs[-1].prompted_ids if side == "prompted" else trajs[-1].unprompted_ids
    body = next(b for b in server.requests if b["prompt"] == ids)  # requests run concurrently
    assert body["max_tokens"] == 1 and body["prompt_logprobs"] == 8
    assert body["model"] == spec and body["add_special_tokens"] is False


@pytest.mark.parametrize("token_ids", [True, False])
def test_generation_reads_token_ids_or_token_id_strings(tiny_model, token_ids):
    spec = tiny_model()
    trajs, renderer = _trajectories(spec, 2)
    prefixes = [Prefix(ids=t.prompted_ids[: t.prompted_prefix_len], messages=()) for t in trajs]
    sampling = SamplingConfig(n=3, temperature=0.8, top_p=0.95, max_new_tokens=6, min_new_tokens=2, seed=5,
                              stop_ids=renderer.stop_ids)
    server = FakeServer(httpx, spec, token_ids=token_ids)
    out = _teacher(server, concurrency=3).generate(prefixes, sampling)
    reference = _teacher(FakeServer(httpx, spec), concurrency=1).generate(prefixes, sampling)
    assert [[s.token_ids for s in g] for g in out] == [[s.token_ids for s in g] for g in reference]
    for sample in (s for group in out for s in group):
        assert len(sample.token_ids) >= 2 and sample.finished == (sample.token_ids[-1] in renderer.stop_ids)
    body = next(b for b in server.requests if b["prompt"] == prefixes[0].ids)  # requests run concurrently
    assert body["n"] == 3 and body["max_tokens"] == 6
    assert (body["temperature"], body["top_p"], body["min_tokens"]) == (0.8, 0.95, 2)
    assert body["stop_token_ids"] == renderer.stop_ids and body["top_k"] == -1
    assert body["return_tokens_as_token_ids"] is True and body["logprobs"] == 0
    assert len({b["seed"] for b in server.requests}) == 2
    # generation_config=true: the student model's extras, applied on every side, override the plain ones.
    asked = SamplingConfig(n=1, max_new_tokens=2, stop_ids=renderer.stop_ids, extras={"repetition_penalty": 1.05})
    _teacher(server, concurrency=1).generate(prefixes[:1], asked)
    assert server.requests[-1]["repetition_penalty"] == 1.05 and server.requests[-1]["top_k"] == -1


def test_a_token_not_in_token_id_form_is_one_clear_error(tiny_model):
    spec = tiny_model()
    trajs, renderer = _trajectories(spec, 1)
    server = FakeServer(httpx, spec, token_ids=False, bad_token="Hello")
    with pytest.raises(VLLMResponseError, match="returned the token 'Hello' where 'token_id:N' was expected"):
        _teacher(server).generate([Prefix(ids=trajs[0].prompted_ids[:-2], messages=())],
                                  SamplingConfig(max_new_tokens=2, stop_ids=renderer.stop_ids))


def test_retries_on_429_and_500_then_succeeds(tiny_model):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    server = FakeServer(httpx, spec)
    teacher = _teacher(server, max_retries=3)
    server.fail = [429, 500, 503]
    assert len(teacher.score(trajs, top_k=4, full=False)[0]) == trajs[0].response_len
    assert len(server.headers) == 1 + 4  # the model check, then 3 failures and 1 success


def test_giving_up_after_max_retries_is_one_sentence(tiny_model):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    server = FakeServer(httpx, spec)
    teacher = _teacher(server, max_retries=1)
    server.fail = [500, 500, 500]
    with pytest.raises(VLLMServerError, match=r"failed with HTTP 500 after 1 retries: overloaded\.$"):
        teacher.score(trajs, top_k=4, full=False)


def test_k_above_the_server_limit_says_how_to_start_it(tiny_model):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 2)
    teacher = _teacher(FakeServer(httpx, spec, max_logprobs=20), top_k=50)
    with pytest.raises(VLLMServerError) as info:
        teacher.score(trajs, top_k=50, full=False)
    message = str(info.value)
    assert message == ("The vLLM server at http://127.0.0.1:8000/v1 allows at most 20 log-probabilities per "
                       "position but top_k=50 needs 50; restart it with --max-logprobs 50 (or lower top_k).")


def test_unreachable_server_and_wrong_model(tiny_model):
    spec = tiny_model()

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    down = VLLMServerTeacher(base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=1,
                             http_client=httpx.Client(transport=httpx.MockTransport(refuse)))
    with pytest.raises(VLLMServerError, match=r"^Could not reach a vLLM server at http://127.0.0.1:9/v1 after 0 retries"):
        down.setup(_config(spec))
    other = VLLMServerTeacher(model="meta-llama/Other", http_client=httpx.Client(
        transport=FakeServer(httpx, spec).transport()))
    with pytest.raises(VLLMServerError, match=f"serves {spec}, not 'meta-llama/Other'; set teacher_options.model"):
        other.setup(_config(spec))


def test_missing_key_sends_empty_and_a_refusal_names_the_variable(tiny_model, monkeypatch):
    spec = tiny_model()
    open_server = FakeServer(httpx, spec)
    _teacher(open_server)
    assert open_server.headers[0]["authorization"] == "Bearer EMPTY"

    locked = FakeServer(httpx, spec, api_key=KEY)
    with pytest.raises(VLLMServerError) as info:
        _teacher(locked)
    assert str(info.value) == ("The vLLM server at http://127.0.0.1:8000/v1 rejected the API key; set the "
                               "environment variable VLLM_API_KEY to the key the server was started with "
                               "(vllm serve --api-key).")

    monkeypatch.setenv("MY_VLLM_KEY", KEY)
    _teacher(locked, api_key_env="MY_VLLM_KEY")
    assert locked.headers[-1]["authorization"] == f"Bearer {KEY}"


def test_full_logits_and_bad_options_are_refused(tiny_model):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    teacher = _teacher(FakeServer(httpx, spec))
    with pytest.raises(CapabilityError, match="top-K log-probabilities only"):
        teacher.score(trajs, top_k=None, full=True)
    for bad in ({"base_url": "localhost:8000"}, {"concurrency": 0}, {"max_retries": -1}, {"timeout": 0}):
        with pytest.raises(ConfigError, match=f"teacher_options.{next(iter(bad))}"):
            VLLMServerTeacher(**bad)


def test_the_api_key_never_reaches_files_logs_or_errors(tiny_model, monkeypatch, caplog, bake_settings):
    from promptbake import Baker

    spec = tiny_model()
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    server = FakeServer(httpx, spec, api_key=KEY)
    teacher = VLLMServerTeacher(http_client=httpx.Client(transport=server.transport()), max_retries=1, timeout=5)
    result = Baker("Always answer like a pirate.", teacher=teacher, model=spec, evaluate=False,
                   **{**bake_settings, "epochs": 1, "max_queries": 3}).run()
    assert result.metrics["trajectories"] == 6
    assert all(h["authorization"] == f"Bearer {KEY}" for h in server.headers)
    messages = []
    server.fail = [500, 500]
    teacher = VLLMServerTeacher(http_client=httpx.Client(transport=server.transport()), max_retries=1, timeout=5)
    for attempt in (lambda: teacher.setup(_config(spec)),
                    lambda: _teacher(FakeServer(httpx, spec, api_key="wrong-key-0000"))):
        with pytest.raises(VLLMServerError) as info:
            attempt()
        messages.append(str(info.value) + repr(info.value))
    files = [p for p in Path(result.run_dir).rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)
    assert KEY not in caplog.text and not any(KEY in m for m in messages)
