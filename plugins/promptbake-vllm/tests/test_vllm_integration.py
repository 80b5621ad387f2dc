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
    from helpers import save_tiny_model
    from promptbake_vllm.vllm import VLLMTeacher
    from vllm_fakes import bake_config, trajectories

    from promptbake import models
    from promptbake.teachers.hf import HFTeacher

    path = str(save_tiny_model(tmp_path))
    trajs, _ = trajectories(path, 4)
    k = 8
    hf = HFTeacher()
    hf.setup(bake_config(path, top_k=k))
    want = hf.score(trajs, top_k=k, full=False)
    teacher = VLLMTeacher(dtype="float32", gpu_memory_utilization=0.3, max_model_len=512,
                          engine_kwargs={"enforce_eager": True})
    teacher.setup(bake_config(path, top_k=k))
    try:
        got = teacher.score(trajs, top_k=k, full=False)
    finally:
        teacher.close()
        models.release()
    for g, w in zip(got, want):
        assert torch.equal(g.sampled_ids, w.sampled_ids)
        # Near-uniform logits of a random model can swap ids at equal values: compare the values.
        assert (g.topk_logprobs - w.topk_logprobs).abs().max() < 1e-2
        assert (g.tail_logprob - w.tail_logprob).abs().max() < 1e-2
