"""The in-process ``vllm`` teacher against a fake ``vllm`` module backed by a tiny HF model."""

from __future__ import annotations

import sys

import pytest
import torch
import vllm_fakes
from promptbake_vllm.vllm import VLLMTeacher
from vllm_fakes import FakeLLM
from vllm_fakes import bake_config as _config
from vllm_fakes import trajectories as _trajectories

from promptbake.builtin import models
from promptbake.builtin.hf import HFTeacher
from promptbake.core.config import BakeConfig
from promptbake.core.errors import (
    CapabilityError,
    ConfigError,
    MissingDependencyError,
    PromptbakeError,
)
from promptbake.core.interfaces import SamplingConfig
from promptbake.core.types import Prefix, Query


def _teacher(spec: str, monkeypatch, flat: bool = True, top_k: int = 8, **options) -> VLLMTeacher:
    vllm_fakes.install(monkeypatch, flat=flat)
    teacher = VLLMTeacher(**options)
    teacher.setup(_config(spec, top_k=top_k))
    return teacher


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("side", ["prompted", "unprompted"])
def test_scoring_matches_the_hf_teacher(tiny_model, monkeypatch, flat, side):
    spec = tiny_model()
    trajs, _ = _trajectories(spec)
    teacher = _teacher(spec, monkeypatch, flat=flat)
    hf = HFTeacher()
    hf.setup(_config(spec, top_k=8))
    got = teacher.score(trajs, top_k=8, full=False, side=side)
    want = hf.score(trajs, top_k=8, full=False, side=side)
    for g, w in zip(got, want):
        assert torch.equal(g.sampled_ids, w.sampled_ids)
        torch.testing.assert_close(g.topk_logprobs, w.topk_logprobs, rtol=0, atol=1e-5)
        assert torch.equal(g.topk_ids, w.topk_ids)
        torch.testing.assert_close(g.tail_logprob, w.tail_logprob, rtol=1e-5, atol=1e-5)


def test_score_asks_for_prompt_logprobs_and_one_token(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 2)
    teacher = _teacher(spec, monkeypatch, top_k=8)
    teacher.score(trajs, top_k=8, full=False, side="prompted")
    prompts, params = FakeLLM.instances[-1].calls[-1]
    assert prompts == [{"prompt_token_ids": t.prompted_ids} for t in trajs]
    assert (params.prompt_logprobs, params.max_tokens, params.flat_logprobs) == (8, 1, True)
    assert params.logprobs is None


def test_older_sampling_params_without_flat_logprobs(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    teacher = _teacher(spec, monkeypatch, flat=False)
    assert len(teacher.score(trajs, top_k=8, full=False)[0]) == trajs[0].response_len
    params = FakeLLM.instances[-1].calls[-1][1]
    assert not hasattr(params, "flat_logprobs") and params.prompt_logprobs == 8


@pytest.mark.parametrize(("top_k", "max_logprobs"), [(5, 20), (20, 20), (64, 64)])
def test_engine_raises_max_logprobs_to_k(tiny_model, monkeypatch, top_k, max_logprobs):
    spec = tiny_model()
    teacher = _teacher(spec, monkeypatch, top_k=top_k, engine_kwargs={"enforce_eager": True}, max_model_len=512)
    llm = FakeLLM.instances[-1]
    assert llm.model_name == spec
    assert llm.kwargs["max_logprobs"] == max_logprobs
    assert llm.kwargs["enable_prefix_caching"] is False
    assert llm.kwargs["enforce_eager"] is True and llm.kwargs["max_model_len"] == 512
    assert teacher.tokenizer is models.load(spec, "auto", "cpu").tokenizer
    trajs, _ = _trajectories(spec, 1)
    assert teacher.score(trajs, top_k=top_k, full=False)[0].topk_ids.shape[1] == top_k


def test_generate_passes_sampling_and_keeps_stop_tokens(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, renderer = _trajectories(spec, 3)
    teacher = _teacher(spec, monkeypatch)
    prefixes = [Prefix(ids=t.prompted_ids[: t.prompted_prefix_len], messages=()) for t in trajs]
    sampling = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_new_tokens=6, min_new_tokens=1, seed=4,
                              stop_ids=renderer.stop_ids)
    out = teacher.generate(prefixes, sampling)
    prompts, params = FakeLLM.instances[-1].calls[-1]
    assert prompts == [{"prompt_token_ids": p.ids} for p in prefixes]
    assert len(params) == 3  # one SamplingParams per prompt: seeds that never overlap
    assert {(p.n, p.temperature, p.top_p, p.max_tokens, p.min_tokens) for p in params} == {(3, 0.7, 0.9, 6, 1)}
    assert all(p.stop_token_ids == renderer.stop_ids for p in params)
    assert len({p.seed for p in params}) == 3
    assert [len(group) for group in out] == [3, 3, 3]
    for sample in (s for group in out for s in group):
        assert 1 <= len(sample.token_ids) <= 6
        assert sample.finished == (sample.token_ids[-1] in renderer.stop_ids)
        assert all(t not in renderer.stop_ids for t in sample.token_ids[:-1])
    assert teacher.generate(prefixes, sampling)[1][2].token_ids == out[1][2].token_ids  # seeded


def test_generation_config_extras_reach_the_sampling_params(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, renderer = _trajectories(spec, 1)
    teacher = _teacher(spec, monkeypatch)
    prefixes = [Prefix(ids=t.prompted_ids[: t.prompted_prefix_len], messages=()) for t in trajs]
    extras = {"repetition_penalty": 1.05, "top_k": 20}
    teacher.generate(prefixes, SamplingConfig(max_new_tokens=3, stop_ids=renderer.stop_ids, extras=extras))
    (params,) = FakeLLM.instances[-1].calls[-1][1]
    assert (params.repetition_penalty, params.top_k, params.min_p) == (1.05, 20, 0.0)
    assert teacher.capabilities.sampling_extras == {"repetition_penalty", "top_k", "min_p"}


@pytest.mark.parametrize("asked_by", ["option", "sampling"])
def test_sample_logprobs_agree_with_scoring_the_same_tokens(tiny_model, monkeypatch, asked_by):
    if asked_by == "sampling" and "logprobs" not in SamplingConfig.__dataclass_fields__:
        pytest.skip("this promptbake's SamplingConfig has no logprobs field")
    spec = tiny_model()
    _, renderer = _trajectories(spec, 1)
    teacher = _teacher(spec, monkeypatch, sample_logprobs=asked_by == "option")
    assert teacher.capabilities.sample_logprobs == (asked_by == "option")
    assert not VLLMTeacher.capabilities.sample_logprobs
    query = Query("q0", ({"role": "user", "content": "Question number 0?"},))
    prefix = renderer.prefix(query, True)
    extra = {"logprobs": 8} if asked_by == "sampling" else {}
    sampling = SamplingConfig(n=2, max_new_tokens=5, seed=1, stop_ids=renderer.stop_ids, **extra)
    for sample in teacher.generate([Prefix(ids=prefix, messages=())], sampling)[0]:
        traj = renderer.trajectory(query, sample.token_ids, prefixes=(prefix, renderer.prefix(query, False)))
        scored = teacher.score([traj], top_k=8, full=False)[0]
        got = sample.targets.head(traj.response_len)
        assert torch.equal(got.topk_ids, scored.topk_ids)
        torch.testing.assert_close(got.topk_logprobs, scored.topk_logprobs)


def test_full_logits_are_refused_in_one_sentence(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    teacher = _teacher(spec, monkeypatch)
    with pytest.raises(CapabilityError, match="top-K log-probabilities only.*topk_kl"):
        teacher.score(trajs, top_k=None, full=True)
    with pytest.raises(CapabilityError, match="top-K log-probabilities only"):
        teacher.score(trajs, top_k=None, full=True, side="unprompted")
    plain = teacher.score(trajs, top_k=None, full=False)[0]  # ce: the tokens alone, no engine call
    assert plain.topk_ids is None and plain.sampled_ids.tolist() == trajs[0].response_ids


def test_setup_refuses_what_cannot_work(tiny_model, monkeypatch):
    tiny_model()
    vllm_fakes.install(monkeypatch)
    with pytest.raises(ConfigError, match="embedded GGUF"):  # before any engine is built
        VLLMTeacher().setup(BakeConfig(prompt="x"))
    assert FakeLLM.instances == []
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        VLLMTeacher(tensor_parallel_size=0)


def test_missing_vllm_names_the_install_command(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ModuleNotFoundError
    with pytest.raises(MissingDependencyError, match=r"pip install 'promptbake-vllm\[engine\]'"):
        VLLMTeacher().setup(_config(tiny_model()))


def test_a_broken_vllm_install_is_one_sentence(tiny_model, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(PromptbakeError, match=r"^vllm is installed but could not be imported: libcudart"):
        VLLMTeacher().setup(_config(tiny_model()))


def test_a_k_above_the_engine_limit_fails_like_vllm(tiny_model, monkeypatch):
    spec = tiny_model()
    trajs, _ = _trajectories(spec, 1)
    teacher = _teacher(spec, monkeypatch, top_k=8)
    with pytest.raises(ValueError, match="greater than max allowed: 20"):
        teacher.score(trajs, top_k=21, full=False)  # K above what setup raised the limit to


def test_a_bake_runs_with_the_vllm_teacher(tiny_model, monkeypatch, bake_settings):
    import promptbake_vllm

    from promptbake import Baker
    from promptbake.core.plugins import temporary_plugin

    spec = tiny_model()
    vllm_fakes.install(monkeypatch)
    with temporary_plugin(promptbake_vllm, "vllm-test"):
        result = Baker("Always answer like a pirate.", teacher="vllm", model=spec,
                       **{**bake_settings, "epochs": 1, "max_queries": 3}).run()
    assert result.adapter_path.is_dir()
    assert result.metrics["trajectories"] == 6
    # Evaluated against the teacher's held-out top-K; base is the student with its adapter off.
    e = result.eval
    assert e is not None and e["kl"] == "top-20 with tail (a lower bound)"
    assert e["tokens"] > 0 and e["kl_prompted_base"] > 0
