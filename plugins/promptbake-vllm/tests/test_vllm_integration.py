"""A real vLLM engine against the hf teacher on a tiny model: runs only with vllm and a CUDA GPU."""

from __future__ import annotations

import importlib.util

import pytest


def _why_skip() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'promptbake-vllm[engine]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def test_vllm_scoring_agrees_with_the_hf_teacher(tmp_path):
    import torch
    from helpers import make_tiny_llama, make_tokenizer
    from promptbake_vllm.vllm import VLLMTeacher
    from vllm_fakes import bake_config, trajectories

    from promptbake.builtin import models
    from promptbake.builtin.hf import HFTeacher
    from promptbake.core.interfaces import SamplingConfig
    from promptbake.core.types import Prefix

    # Like helpers.save_tiny_model, with a head size vLLM's attention kernels support (64, not 8).
    path = str(tmp_path / "tiny-vllm")
    tokenizer = make_tokenizer("smollm2")
    model = make_tiny_llama(tokenizer, hidden_size=128, num_heads=2, num_kv_heads=2, intermediate_size=256)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    trajs, renderer = trajectories(path, 4)
    k = 8
    hf = HFTeacher()
    hf.setup(bake_config(path, top_k=k))
    want = hf.score(trajs, top_k=k, full=False)
    teacher = VLLMTeacher(dtype="float32", gpu_memory_utilization=0.3, max_model_len=512,
                          engine_kwargs={"enforce_eager": True})
    teacher.setup(bake_config(path, top_k=k))
    try:
        got = teacher.score(trajs, top_k=k, full=False)
        # Generation through the real API: token-id prompts, one SamplingParams per prompt.
        prefixes = [Prefix(ids=t.prompted_ids[: t.prompted_prefix_len], messages=()) for t in trajs[:2]]
        samples = teacher.generate(prefixes, SamplingConfig(n=2, max_new_tokens=4, stop_ids=renderer.stop_ids))
    finally:
        teacher.close()
        models.release()
    assert [len(group) for group in samples] == [2, 2]
    for sample in (s for group in samples for s in group):
        assert 1 <= len(sample.token_ids) <= 4
        assert sample.finished == (sample.token_ids[-1] in renderer.stop_ids)
    for g, w in zip(got, want):
        assert torch.equal(g.sampled_ids, w.sampled_ids)
        # Near-uniform logits of a random model can swap ids at equal values: compare the values.
        assert (g.topk_logprobs - w.topk_logprobs).abs().max() < 1e-2
        assert (g.tail_logprob - w.tail_logprob).abs().max() < 1e-2
