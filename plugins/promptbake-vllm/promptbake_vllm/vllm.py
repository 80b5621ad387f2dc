"""The ``vllm`` teacher: an in-process ``vllm.LLM`` engine that samples and scores.

Scoring is teacher-forced through ``prompt_logprobs``: each trajectory is sent
as a prompt (system prompt, conversation and response) with ``max_tokens=1``,
and vLLM returns the top-K log-probabilities at every prompt position.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from typing import Any

from promptbake import (
    BakeConfig,
    CapabilityError,
    ConfigError,
    MissingDependencyError,
    Prefix,
    PromptbakeError,
    Sample,
    SamplingConfig,
    Side,
    Targets,
    Teacher,
    TeacherCapabilities,
    Trajectory,
)

from .convert import prompt_targets, request_seed, sample_targets, to_sample

INSTALL = "pip install 'promptbake-vllm[engine]'"
DEFAULT_MAX_LOGPROBS = 20  # vLLM's own default for max_logprobs
# generation_config extras (promptbake.decoding.EXTRAS) that vLLM's SamplingParams take under the same names.
SAMPLING_EXTRAS = frozenset({"repetition_penalty", "top_k", "min_p"})


def import_vllm() -> Any:
    """The vllm module, or a one-sentence error saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "vllm":
            raise MissingDependencyError(
                f"The vllm teacher needs the Python package 'vllm', which is not installed (it needs "
                f"Linux and a CUDA GPU): {INSTALL}"
            ) from exc
        # Installed but broken (a missing CUDA library, a torch it was not built for).
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PromptbakeError(f"vllm is installed but could not be imported: {first.rstrip('.')}.") from exc
    return vllm


def full_logits_error(name: str) -> CapabilityError:
    """The sentence for a request for full-vocabulary log-probs, which vLLM cannot give cheaply."""
    return CapabilityError(
        f"Teacher '{name}' gives top-K log-probabilities only, not full-vocabulary ones; "
        f"use loss topk_kl or ce."
    )


def without_engine(name: str, trajectories: Sequence[Trajectory], top_k: int | None,
                   full: bool) -> list[Targets] | None:
    """Scoring requests that need no engine call: full logits (refused) and tokens only (ce)."""
    if full:
        raise full_logits_error(name)
    if top_k:
        return None
    import torch

    return [Targets(sampled_ids=torch.tensor(t.response_ids, dtype=torch.long)) for t in trajectories]


def response_prompt(trajectory: Trajectory, side: Side) -> tuple[list[int], int]:
    """The ids a trajectory is scored as, and where its response starts."""
    if side == "prompted":
        return trajectory.prompted_ids, trajectory.prompted_prefix_len
    return trajectory.unprompted_ids, trajectory.unprompted_prefix_len


def make_params(cls: Any, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    """``cls(**required, **optional)``, or without ``optional`` where this vLLM lacks those fields."""
    try:
        return cls(**required, **optional)
    except TypeError:  # an older SamplingParams without e.g. flat_logprobs
        return cls(**required)


class VLLMTeacher(Teacher):
    """A vLLM engine in this process as teacher: batched sampling and top-K ``prompt_logprobs`` scoring.

    Options (``teacher_options``): ``model`` (defaults to the bake's
    ``teacher_model`` or ``model``: a Hugging Face id or local folder),
    ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``,
    ``dtype``, ``enable_prefix_caching`` (off: requests with prompt_logprobs do
    not read the prefix cache, and vLLM has had order-dependent results with it
    on), ``engine_kwargs`` (more ``vllm.LLM`` keyword arguments) and
    ``sample_logprobs`` (also return top-K targets with each sample).
    """

    name = "vllm"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=True, max_top_k=None, full_logits=False, token_ids=True,
        sampling_extras=SAMPLING_EXTRAS,
    )

    def __init__(self, model: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 dtype: str = "auto", enable_prefix_caching: bool = False,
                 engine_kwargs: dict[str, Any] | None = None, sample_logprobs: bool = False):
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ConfigError(f"teacher_options.tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}.")
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(f"teacher_options.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}.")
        if engine_kwargs is not None and not isinstance(engine_kwargs, dict):
            raise ConfigError("teacher_options.engine_kwargs must be a table of vllm.LLM keyword arguments.")
        self.model_spec = model
        self.engine_options: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
        }
        if max_model_len is not None:
            self.engine_options["max_model_len"] = max_model_len
        self.engine_kwargs = dict(engine_kwargs or {})
        self.sample_logprobs = sample_logprobs
        if sample_logprobs:
            self.capabilities = dataclasses.replace(type(self).capabilities, sample_logprobs=True)
        self.llm: Any = None
        self.vllm: Any = None
        self.top_k = DEFAULT_MAX_LOGPROBS
        self.show_progress = False

    def setup(self, config: BakeConfig) -> None:
        from promptbake.builtin.models import EMBEDDED

        spec = self.model_spec or config.teacher_model or config.model
        if spec in EMBEDDED:
            raise ConfigError(
                f"The vllm teacher cannot load the embedded GGUF model '{spec}'; set model (or "
                f"teacher_options.model) to a Hugging Face id or a local model folder, e.g. "
                f"HuggingFaceTB/SmolLM2-135M-Instruct."
            )
        self.vllm = import_vllm()
        self.top_k = config.top_k
        kwargs = {
            "model": spec, "seed": config.seed, **self.engine_options,
            # vLLM refuses K above max_logprobs (default 20), so raise it to what the bake asks for.
            "max_logprobs": max(config.top_k, DEFAULT_MAX_LOGPROBS),
            **self.engine_kwargs,
        }
        self.llm = self.vllm.LLM(**kwargs)
        self.show_progress = config.progress

    @property
    def tokenizer(self) -> Any:
        return self._llm.get_tokenizer()

    @property
    def _llm(self) -> Any:
        if self.llm is None:
            raise RuntimeError("VLLMTeacher.setup() was not called")
        return self.llm

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        llm = self._llm
        # Top-K targets with each sample: asked for by the bake (SamplingConfig.logprobs,
        # in promptbake versions that have it) or by the sample_logprobs option.
        k = getattr(sampling, "logprobs", None) or (self.top_k if self.sample_logprobs else None)
        params = []
        for i in range(len(prefixes)):
            required: dict[str, Any] = {
                "n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens, "min_tokens": sampling.min_new_tokens,
                "seed": request_seed(sampling.seed, i, sampling.n), "stop_token_ids": list(sampling.stop_ids),
            }
            if k:
                required["logprobs"] = k
            required.update(getattr(sampling, "extras", None) or {})  # generation_config=true: on every side
            params.append(make_params(self.vllm.SamplingParams, required,
                                      {"detokenize": False, "flat_logprobs": True}))
        # TokensPrompt is a TypedDict: the prompt is this plain dict.
        prompts = [{"prompt_token_ids": list(p.ids)} for p in prefixes]
        outputs = llm.generate(prompts, params, use_tqdm=self.show_progress)
        out: list[list[Sample]] = []
        for result in outputs:
            samples = []
            for completion in sorted(result.outputs, key=lambda c: c.index):
                sample = to_sample(completion.token_ids, completion.finish_reason,
                                   getattr(completion, "stop_reason", None), sampling.stop_ids)
                if k:
                    # One row per generated token the sample keeps (it is cut after its stop token).
                    kept = list(completion.token_ids)[: len(sample.token_ids)]
                    sample.targets = sample_targets(kept, completion.logprobs, k)
                samples.append(sample)
            out.append(samples)
        return out

    def score(self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
              side: Side = "prompted") -> list[Targets]:
        plain = without_engine(self.name, trajectories, top_k, full)
        if plain is not None:
            return plain
        llm = self._llm
        params = make_params(
            self.vllm.SamplingParams,
            {"prompt_logprobs": top_k, "max_tokens": 1, "temperature": 1.0},
            # Flat logprobs avoid a Python object per (position, token); no text is needed.
            {"flat_logprobs": True, "detokenize": False},
        )
        prompts = []
        for t in trajectories:
            ids, _ = response_prompt(t, side)
            prompts.append({"prompt_token_ids": list(ids)})
        outputs = llm.generate(prompts, params, use_tqdm=False)
        out = []
        for t, result in zip(trajectories, outputs):
            _, prefix_len = response_prompt(t, side)
            out.append(prompt_targets(result.prompt_logprobs, prefix_len, t.response_ids, top_k))
        return out

    def close(self) -> None:
        # vLLM frees GPU memory when the engine is garbage-collected.
        self.llm = None
        gc.collect()
