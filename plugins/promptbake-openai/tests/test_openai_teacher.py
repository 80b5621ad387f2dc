"""The openai and openrouter teachers against an in-process fake of the documented API shape.

These tests run the real openai client (its retries included) over
httpx.MockTransport; the live llama.cpp server tests are in test_openai_llamacpp.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import promptbake_openai
import pytest
import torch
from openai_fakeapi import FakeChatAPI
from promptbake_openai.openai import OpenAITeacher
from promptbake_openai.openrouter import OpenRouterTeacher

from promptbake import Baker
from promptbake.builtin import models
from promptbake.core.errors import BackendError, CapabilityError, ConfigError
from promptbake.core.plugins import temporary_plugin

PROMPT = "Always respond in French."
REMOTE = "https://api.example.test/v1"  # not loopback: a key is required
SECRET = "sk-test-DO-NOT-LEAK-1234567890"


@pytest.fixture
def registered():
    with temporary_plugin(promptbake_openai, "openai-under-test"):
        yield


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    return SECRET


def teacher_for(api: FakeChatAPI, tmp_path, cls=OpenAITeacher, **options) -> OpenAITeacher:
    return cls(base_url=options.pop("base_url", REMOTE), http_client=api.client(),
               cache_dir=str(tmp_path / "responses"), **options)


def tokenizer_of(spec: str):
    return models.load(spec, "auto", "cpu").tokenizer


def test_registered_names(registered):
    from promptbake.core import registry

    assert {"openai", "openrouter"} <= set(registry.names("teacher"))
    assert registry.resolve("teacher", "openai-compatible") is OpenAITeacher


def test_topk_bake_uses_sample_logprobs_and_lowers_heldout_kl(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec))
    settings = {**bake_settings, "epochs": 4, "max_new_tokens": 16, "top_k": 5, "lr": 5e-3}
    baker = Baker(PROMPT, teacher=teacher_for(api, tmp_path), loss="topk_kl", model=spec, **settings)
    result = baker.run()
    body = api.bodies[0]
    assert body["messages"][0] == {"role": "system", "content": PROMPT}
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 16
    # 6 train queries x 2 samples + 3 held-out, one request each, distinct seeds per sample; then
    # the evaluation's greedy answers of the prompted model to the 3 held-out queries.
    assert len(api.bodies) == 6 * 2 + 3 + 3
    sampled, greedy = api.bodies[:-3], api.bodies[-3:]
    assert len({(json.dumps(b["messages"]), b["seed"]) for b in sampled}) == len(sampled)
    assert all(b["temperature"] == 0 for b in greedy) and all(b["temperature"] > 0 for b in sampled)
    e = result.eval
    assert e is not None and "teacher's own samples" in e["kl"]
    assert e["kl_prompted_baked"] < e["kl_prompted_base"]
    # The end-of-turn rows have no teacher log-probs: excluded, not trained.
    from promptbake.run.cache import TargetStore

    store = TargetStore(result.run_dir / "targets")
    targets = store.read(store.index()["key"])
    assert all(t.weight is not None and t.weight[-1] == 0 and t.weight[:-1].all() for t in targets)


def test_ce_bake_requests_no_logprobs(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), logprobs=False)
    result = Baker(PROMPT, teacher=teacher_for(api, tmp_path), loss="ce", model=spec,
                   **{**bake_settings, "evaluate": False}).run()
    assert all("logprobs" not in b and "top_logprobs" not in b for b in api.bodies)
    lines = (result.run_dir / "trajectories.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["text"].startswith("Bonjour")


def test_retries_on_429_and_500_then_succeeds(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), failures=[429, 500, 503])
    teacher = teacher_for(api, tmp_path, max_retries=3, concurrency=1)
    Baker(PROMPT, teacher=teacher, loss="ce", model=spec,
          **{**bake_settings, "max_queries": 1, "samples_per_query": 1, "evaluate": False, "epochs": 1}).run()
    assert len(api.bodies) == 4  # three failures retried by the client, then the answer


def test_persistent_failure_is_one_sentence_and_completed_work_is_kept(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    settings = {**bake_settings, "max_queries": 4, "samples_per_query": 1, "evaluate": False, "epochs": 1}
    broken = FakeChatAPI(tokenizer_of(spec), fail_after=2)
    with pytest.raises(BackendError, match=r"kept failing after 1 retries \(HTTP 500\).*re-run resumes"):
        Baker(PROMPT, teacher=teacher_for(broken, tmp_path, max_retries=1, concurrency=1), loss="ce",
              model=spec, **settings).run()
    # A re-run pays only for what was not answered before.
    fixed = FakeChatAPI(tokenizer_of(spec))
    Baker(PROMPT, teacher=teacher_for(fixed, tmp_path), loss="ce", model=spec,
          **{**settings, "overwrite": True}).run()
    assert len(fixed.bodies) == 4 - 2
    # And a third run pays nothing at all.
    again = FakeChatAPI(tokenizer_of(spec))
    Baker(PROMPT, teacher=teacher_for(again, tmp_path), loss="ce", model=spec,
          **{**settings, "overwrite": True}).run()
    assert again.bodies == []


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path):
    from promptbake_openai.responses import ResponseCache

    cache = ResponseCache(tmp_path)
    cache.put("a", {"content": "x"})
    with open(cache.path, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "response": {"cont')  # the process died mid-line
    reread = ResponseCache(tmp_path)
    assert reread.get("a") == {"content": "x"} and reread.get("b") is None
    reread.put("c", {"content": "y"})
    assert ResponseCache(tmp_path).get("c") == {"content": "y"}


def test_provider_without_logprobs_is_refused(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), logprobs=False)
    with pytest.raises(CapabilityError, match="returned no logprobs.*or use loss ce"):
        Baker(PROMPT, teacher=teacher_for(api, tmp_path, concurrency=1), loss="topk_kl", model=spec,
              **bake_settings).run()


def test_foreign_vocabulary_with_kl_is_refused(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), foreign=True)
    with pytest.raises(CapabilityError, match="another tokenizer .*use loss ce"):
        Baker(PROMPT, teacher=teacher_for(api, tmp_path), loss="topk_kl", model=spec, **bake_settings).run()


def test_declared_teacher_tokenizer_of_another_family_allows_only_ce(tiny_model, bake_settings, tmp_path, api_key):
    from helpers import make_tokenizer

    spec = tiny_model("smollm2")
    other = tmp_path / "llama3-tokenizer"
    make_tokenizer("llama3").save_pretrained(other)
    api = FakeChatAPI(tokenizer_of(spec))
    with pytest.raises(CapabilityError, match="tokenizers differ.*loss ce"):
        Baker(PROMPT, teacher=teacher_for(api, tmp_path, tokenizer=str(other)), loss="topk_kl", model=spec,
              **bake_settings).run()
    assert api.bodies == []  # refused before any request
    Baker(PROMPT, teacher=teacher_for(api, tmp_path, tokenizer=str(other)), loss="ce", model=spec,
          **{**bake_settings, "evaluate": False, "overwrite": True}).run()


@pytest.mark.parametrize("loss, settings, message", [
    ("full_kl", {}, "needs full-vocabulary logits, which teacher 'openai' cannot give"),
    ("topk_kl", {"top_k": 32}, r"top_k=32 is above teacher 'openai''s limit of 20"),
])
def test_capability_refusals_before_any_work(registered, api_key, loss, settings, message):
    with pytest.raises(CapabilityError, match=message):
        Baker(PROMPT, teacher="openai", loss=loss, **settings).check()


def test_missing_key_is_one_sentence(monkeypatch, tmp_path, tiny_model):
    from promptbake.core.config import BakeConfig

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY, which is not set"):
        OpenAITeacher(base_url=REMOTE).setup(BakeConfig(prompt="p"))
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
        OpenRouterTeacher().setup(BakeConfig(prompt="p", teacher_model="some/model"))
    with pytest.raises(ConfigError, match="MY_KEY"):
        OpenAITeacher(base_url=REMOTE, api_key_env="MY_KEY").setup(BakeConfig(prompt="p"))
    # A server on loopback (llama.cpp, vLLM) does not need one.
    OpenAITeacher(base_url="http://127.0.0.1:9/v1", cache_dir=str(tmp_path)).setup(BakeConfig(prompt="p"))


def test_the_key_never_reaches_a_file_or_a_log(tiny_model, bake_settings, tmp_path, api_key, caplog):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec))
    caplog.set_level("DEBUG")
    result = Baker(PROMPT, teacher=teacher_for(api, tmp_path), model=spec, include_prompt=True,
                   **bake_settings).run()
    assert api.headers[0]["authorization"] == f"Bearer {SECRET}"  # it was used...
    for folder in (result.run_dir, tmp_path / "responses"):  # ...and written nowhere
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_auth_failure_names_the_variable_not_the_key(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), failures=[401])
    with pytest.raises(BackendError) as info:
        Baker(PROMPT, teacher=teacher_for(api, tmp_path, concurrency=1), loss="ce", model=spec,
              **bake_settings).run()
    assert "refused the API key from OPENAI_API_KEY (HTTP 401)" in str(info.value)
    assert SECRET not in str(info.value)


def test_openrouter_headers_routing_and_model(tiny_model, bake_settings, tmp_path, api_key):
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec))
    teacher = OpenRouterTeacher(http_client=api.client(), cache_dir=str(tmp_path / "responses"),
                                provider={"order": ["a", "b"]})
    with pytest.raises(ConfigError, match="needs a model name: set teacher_model"):
        Baker(PROMPT, teacher=teacher, model=spec, **bake_settings).run()
    teacher = OpenRouterTeacher(http_client=api.client(), cache_dir=str(tmp_path / "responses"),
                                provider={"order": ["a", "b"]})
    Baker(PROMPT, teacher=teacher, model=spec, teacher_model="meta-llama/llama-3.1-8b-instruct",
          **{**bake_settings, "max_queries": 1, "evaluate": False, "overwrite": True}).run()
    assert str(teacher.client.base_url).startswith("https://openrouter.ai/api/v1")
    body, headers = api.bodies[0], api.headers[0]
    assert body["model"] == "meta-llama/llama-3.1-8b-instruct"
    assert body["provider"] == {"order": ["a", "b"], "require_parameters": True}
    assert headers["x-title"] == "promptbake" and headers["http-referer"].startswith("https://")


def test_text_only_api_tokens_map_like_llama_cpp(tiny_model, bake_settings, tmp_path, api_key):
    """llama.cpp returns ``bytes: null``: tokens are matched by their text."""
    spec = tiny_model("smollm2")
    api = FakeChatAPI(tokenizer_of(spec), with_bytes=False, finish_reason="length")
    teacher = teacher_for(api, tmp_path)
    Baker(PROMPT, teacher=teacher, model=spec, **{**bake_settings, "evaluate": False}).run()
    assert teacher.stats["excluded_rows"] == 0 and teacher.stats["entries_mapped"] == teacher.stats["entries"]


def test_sample_targets_are_cut_with_their_trajectory():
    """A trajectory that truncates its sample keeps the first rows of its targets."""
    from promptbake.core.types import Targets, Trajectory
    from promptbake.stages.generate import cut_to

    t = Targets(sampled_ids=torch.arange(5), topk_ids=torch.zeros(5, 2, dtype=torch.int32),
                topk_logprobs=torch.zeros(5, 2), tail_logprob=torch.zeros(5), weight=torch.ones(5))
    traj = Trajectory("q", 0, [9, 9, 0, 1, 7], [9, 0, 1, 7], response_len=3)
    cut = cut_to(traj, t)
    assert len(cut) == 3 and cut.sampled_ids.tolist() == [0, 1, 7] and cut.weight.shape == (3,)


@pytest.mark.parametrize("args, fragment", [
    (["--teacher", "openai", "--loss", "full_kl"], "which teacher 'openai' cannot give"),
    (["--teacher", "openai", "--top-k", "50"], "top_k=50 is above teacher 'openai''s limit of 20"),
    (["--teacher", "openai", "-s", "teacher_options.base_url=https://api.example.test/v1"],
     "environment variable OPENAI_API_KEY, which is not set"),
    (["--teacher", "openrouter", "-s", "teacher_options.api_key_env=NO_SUCH_VAR"], "NO_SUCH_VAR"),
])
def test_cli_refusals_are_one_sentence(tmp_path, args, fragment):
    """From the installed entry point, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PROMPTBAKE_LOAD_PLUGINS"] = "openai"
    result = subprocess.run([sys.executable, "-m", "promptbake", "bake", "--prompt", "x", *args,
                             "-s", "teacher_model=some/model", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written
