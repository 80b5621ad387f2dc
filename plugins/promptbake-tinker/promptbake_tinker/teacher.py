"""The ``tinker`` teacher: the prompted base model behind a Tinker SamplingClient.

* generate: ``SamplingClient.sample`` on the prompted rendering (``Prefix.ids``),
  all requests submitted before any is waited on.
* score: the whole trajectory is sent as a prompt with ``max_tokens=1``,
  ``include_prompt_logprobs=True`` and ``topk_prompt_logprobs=K``; entry ``p``
  of ``topk_prompt_logprobs`` is the top-K distribution *of* prompt token ``p``
  given the tokens before it (entry 0 is None), so response token ``i`` at
  position ``prefix_len + i`` reads entry ``prefix_len + i``. The service caps
  K at 20 and gives no full vocabulary, so ``full_kl`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from promptbake import (
    BakeConfig,
    CapabilityError,
    Prefix,
    Sample,
    SamplingConfig,
    Side,
    Targets,
    Teacher,
    TeacherCapabilities,
    Trajectory,
)

from . import client

MAX_TOP_K = 20  # the service's cap on topk_prompt_logprobs
SENTINEL = -9999.0  # empty slots in the SDK's dense top-K arrays come back as (0, -99999.0)


class TinkerTeacher(Teacher):
    """A prompted model sampled and scored on the Tinker service.

    Options (``teacher_options``):
        model: the Tinker base model name (default: ``teacher_model``, then ``model``).
        model_path: a ``tinker://.../sampler_weights/...`` path to sample from instead.
        base_url: the service root (default: the SDK's, or ``TINKER_BASE_URL``).
        timeout: seconds to wait for any one request (default 600).
    """

    name = "tinker"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=True, max_top_k=MAX_TOP_K, full_logits=False, token_ids=True,
    )

    def __init__(self, model: str | None = None, model_path: str | None = None, base_url: str | None = None,
                 timeout: float = client.DEFAULT_TIMEOUT):
        self.model_name = model
        self.model_path = model_path
        self.base_url = base_url
        self.timeout = client.check_timeout("Teacher 'tinker'", timeout)
        self.service: Any = None
        self.sampler: Any = None
        self._tokenizer: Any = None

    def check(self, config: BakeConfig) -> None:
        self.model_name = self.model_name or config.teacher_model or config.model
        client.require_key("Teacher 'tinker'")

    def setup(self, config: BakeConfig) -> None:
        self.check(config)
        client.import_tinker("Teacher 'tinker'")
        self.service = client.connect(self.base_url)
        made = (self.service.create_sampling_client(model_path=self.model_path) if self.model_path
                else self.service.create_sampling_client(base_model=self.model_name))
        self.sampler = client.resolve(made, self.timeout, "the sampling client")

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.sampler is not None:
            self._tokenizer = self.sampler.get_tokenizer()
        return self._tokenizer

    def _sampler(self) -> Any:
        if self.sampler is None:
            raise RuntimeError("TinkerTeacher.setup() was not called")
        return self.sampler

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        import tinker

        sampler = self._sampler()
        stop = list(sampling.stop_ids)
        futures = []
        for i, prefix in enumerate(prefixes):  # all submitted first: the SDK pipelines them
            params = tinker.SamplingParams(
                max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                seed=sampling.seed * 100003 + i, stop=stop or None,
            )
            futures.append(sampler.sample(prompt=tinker.ModelInput.from_ints(list(prefix.ids)),
                                          num_samples=sampling.n, sampling_params=params))
        out: list[list[Sample]] = []
        for fut in futures:
            response = client.wait(fut, self.timeout, "a sampling request")
            out.append([_sample(seq, stop) for seq in response.sequences])
        return out

    def score(self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
              side: Side = "prompted") -> list[Targets]:
        import tinker
        import torch

        if full:
            raise CapabilityError(
                "Teacher 'tinker' cannot give full-vocabulary log-probs (the service returns at most "
                f"the top {MAX_TOP_K} per position); use loss topk_kl or ce.")
        if top_k is not None and top_k > MAX_TOP_K:
            raise CapabilityError(
                f"top_k={top_k} is above teacher 'tinker''s limit of {MAX_TOP_K}; use top_k <= {MAX_TOP_K}.")
        if not top_k:
            return [Targets(sampled_ids=torch.tensor(t.response_ids, dtype=torch.long)) for t in trajectories]
        sampler = self._sampler()
        futures = []
        for traj in trajectories:
            ids = traj.prompted_ids if side == "prompted" else traj.unprompted_ids
            futures.append(sampler.sample(
                prompt=tinker.ModelInput.from_ints(list(ids)), num_samples=1,
                sampling_params=tinker.SamplingParams(max_tokens=1),
                include_prompt_logprobs=True, topk_prompt_logprobs=top_k,
            ))
        out = []
        for traj, fut in zip(trajectories, futures):
            response = client.wait(fut, self.timeout, "a scoring request")
            start = traj.prompted_prefix_len if side == "prompted" else traj.unprompted_prefix_len
            out.append(topk_targets(response.topk_prompt_logprobs, start, traj.response_ids, top_k))
        return out


def _sample(seq: Any, stop: Sequence[int]) -> Sample:
    """Tokens up to and including the first stop token; whether the sample finished."""
    tokens = list(seq.tokens)
    for i, tok in enumerate(tokens):
        if tok in stop:
            return Sample(token_ids=tokens[: i + 1], finished=True)
    if seq.stop_reason == "stop" and stop:
        # The service stopped on a stop token without returning it: put it back, so a
        # finished response ends with its end-of-turn token as the renderer expects.
        return Sample(token_ids=tokens + [stop[0]], finished=True)
    return Sample(token_ids=tokens, finished=False)


def topk_targets(rows: Sequence[Any] | None, start: int, response_ids: list[int], k: int) -> Targets:
    """Targets from ``SampleResponse.topk_prompt_logprobs`` for prompt positions ``start ..``.

    Rows with fewer than K entries are padded as the core pads them (see
    :func:`promptbake.scoring.sparse_targets`); a position with no entries gets weight 0.
    """
    from promptbake import sparse_targets

    rows = list(rows or [])
    kept: list[list[tuple[int, float]]] = []
    for p in range(start, start + len(response_ids)):
        entries = rows[p] if p < len(rows) else None
        # The SDK fills empty slots of its dense arrays with a sentinel log-prob: drop them.
        kept.append([(int(t), float(lp)) for t, lp in (entries or []) if lp > SENTINEL and not math.isnan(lp)][:k])
    weight = [1.0 if row else 0.0 for row in kept]
    return sparse_targets(kept, response_ids, width=k, weight=None if all(weight) else weight)
