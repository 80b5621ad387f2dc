"""The ``vllm-server`` teacher: a running ``vllm serve`` reached through its OpenAI-compatible API.

Prompts go to ``/v1/completions`` as token ids (no re-tokenization on the
server). Generated ids come back in ``choices[i].token_ids`` (vLLM's
``return_token_ids``) or, on servers without it, as ``"token_id:N"`` strings
in ``choices[i].logprobs.tokens`` (``return_tokens_as_token_ids``). Scoring
uses vLLM's ``prompt_logprobs`` extension.

``base_url`` may list several servers of one model: requests are spread over
them, ``concurrency`` in flight on each, and the work of a server that stops
answering moves to the others (``promptbake.EndpointPool``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from promptbake import (
    BakeConfig,
    ConfigError,
    Endpoint,
    EndpointDown,
    EndpointPool,
    MissingDependencyError,
    Prefix,
    Sample,
    SamplingConfig,
    Side,
    Targets,
    Teacher,
    TeacherCapabilities,
    Trajectory,
    endpoint_urls,
    http_failure,
    server_detail,
)

from .convert import (
    VLLMResponseError,
    parse_token_id,
    prompt_targets,
    request_seed,
    to_sample,
)
from .vllm import SAMPLING_EXTRAS, response_prompt, without_engine

DEFAULT_URL = "http://127.0.0.1:8000/v1"
T = TypeVar("T")
R = TypeVar("R")

# vLLM: "Requested prompt logprobs of 50, which is greater than max allowed: 20"
_TOO_MANY = re.compile(r"logprobs of (\d+), which is greater than max allowed: (-?\d+)")

# Sampling settings sent with every generation request, so the server's defaults from the
# model's generation_config (vLLM applies them unless asked otherwise) cannot change the
# distribution being sampled. top_k=-1 means "off" on every vLLM version.
_PLAIN_SAMPLING = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


try:
    from promptbake import BackendError as _ServiceError
except ImportError:  # a promptbake without BackendError
    from promptbake import PromptbakeError as _ServiceError


class VLLMServerError(_ServiceError):
    """The vLLM server could not be reached or refused a request (after the client's retries)."""


class VLLMServerDown(VLLMServerError, EndpointDown):
    """A vLLM server stopped answering (connection errors or retried statuses); others may take its work."""


def _as_dict(obj: Any) -> dict[str, Any]:
    """A response object as plain data, vLLM's extra fields included."""
    if isinstance(obj, Mapping):
        return dict(obj)
    return obj.model_dump()


class VLLMServerTeacher(Teacher):
    """A ``vllm serve`` process as teacher, through the official ``openai`` client.

    Options (``teacher_options``): ``base_url`` (default
    ``http://127.0.0.1:8000/v1``; a list for several servers of the same
    model), ``model`` (the served name; defaults to the
    bake's ``teacher_model`` or ``model``), ``api_key_env`` (the environment
    variable holding the key, default ``VLLM_API_KEY``; "EMPTY" when unset),
    ``max_retries`` (the client retries connection errors, 408, 409, 429 and
    5xx with backoff), ``timeout`` (seconds per request) and ``concurrency``
    (requests in flight per server). ``client`` (one server) or ``http_client``
    inject a ready ``openai.OpenAI`` or ``httpx.Client`` (tests, proxies).

    The server caps K with ``--max-logprobs`` (default 20); start it with
    ``--max-logprobs K`` for top_k above 20.
    """

    name = "vllm-server"
    capabilities = TeacherCapabilities(
        can_generate=True, can_score=True, max_top_k=None, full_logits=False, token_ids=True,
        sampling_extras=SAMPLING_EXTRAS,
    )

    def __init__(self, base_url: str | Sequence[str] = DEFAULT_URL, model: str | None = None,
                 api_key_env: str = "VLLM_API_KEY", max_retries: int = 3, timeout: float = 600.0,
                 concurrency: int = 8, client: Any = None, http_client: Any = None):
        urls = endpoint_urls(base_url)
        if client is not None and len(urls) > 1:
            raise ConfigError("teacher_options.client is one server's client; with several base_url give "
                              "http_client (or nothing) instead.")
        for key, value in (("max_retries", max_retries), ("concurrency", concurrency)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "max_retries" else 1):
                raise ConfigError(f"teacher_options.{key} must be a {'non-negative' if key == 'max_retries' else 'positive'} integer, got {value!r}.")
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"teacher_options.timeout must be a positive number of seconds, got {timeout!r}.")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.model_spec = model
        self.model: str | None = model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.concurrency = concurrency
        self.client = client  # the first server's
        self._own_client = client is None
        self._http_client = http_client
        self.pool: EndpointPool[Any] | None = None
        self.show_progress = False

    # -- setup ----------------------------------------------------------------

    def setup(self, config: BakeConfig) -> None:
        self.model = self.model_spec or config.teacher_model or config.model
        self.show_progress = config.progress
        if self.pool is None:
            clients = [self.client] if self.client is not None else [self._make_client(u) for u in self.base_urls]
            self.client = clients[0]
            self.pool = EndpointPool(list(zip(self.base_urls, clients)), self.concurrency, error=VLLMServerError)
        self._check_model()

    def _make_client(self, base_url: str) -> Any:
        try:
            import openai
        except ImportError as exc:
            raise MissingDependencyError(
                "The vllm-server teacher needs the Python package 'openai': pip install 'openai>=1.40'"
            ) from exc
        # The key is read here and handed to the client only; it is never stored or logged.
        kwargs: dict[str, Any] = {
            "base_url": base_url, "api_key": os.environ.get(self.api_key_env) or "EMPTY",
            "max_retries": self.max_retries, "timeout": self.timeout,
        }
        if self._http_client is not None:
            kwargs["http_client"] = self._http_client
        return openai.OpenAI(**kwargs)

    def _check_model(self) -> None:
        """Fail at setup, in one sentence, when every server is down or one serves another model.

        A server that does not answer (of several) is dropped with a warning."""
        assert self.pool is not None

        def served(endpoint: Endpoint[Any]) -> list[str]:
            return [m.id for m in self._call(endpoint.url, lambda: list(endpoint.client.models.list()))]

        for endpoint, ids in self.pool.each(served):
            if self.model not in ids:
                raise VLLMServerError(
                    f"The vLLM server at {endpoint.url} serves {', '.join(ids) or 'no model'}, not "
                    f"'{self.model}'; set teacher_options.model to one of those"
                    + ("." if len(self.pool) == 1 else " (every base_url must serve the same model)."))

    # -- requests -------------------------------------------------------------

    def _call(self, url: str, fn: Callable[[], R], top_k: int | None = None) -> R:
        """Run one client call; turn the client's exceptions into one-sentence errors."""
        import openai

        try:
            return fn()
        except openai.APIStatusError as exc:
            # Statuses the client retries (408/409/429/5xx), still failing: this server is down.
            error = VLLMServerDown if http_failure(exc.status_code) == "retried" else VLLMServerError
            raise error(self._status_sentence(exc, url, top_k)) from None
        except openai.APIConnectionError:
            raise VLLMServerDown(
                f"Could not reach a vLLM server at {url} after {self.max_retries} retries; start "
                f"one with 'vllm serve MODEL' or set teacher_options.base_url."
            ) from None

    def _status_sentence(self, exc: Any, url: str, top_k: int | None) -> str:
        """One sentence for an HTTP error status (the wording is this backend's; the kinds are core's)."""
        code = exc.status_code
        message = server_detail(getattr(exc, "body", None), getattr(exc, "message", "") or type(exc).__name__,
                                secret=os.environ.get(self.api_key_env))
        kind = http_failure(code)
        where = f"The vLLM server at {url}"
        if kind == "key":
            return (f"{where} rejected the API key; set the environment variable {self.api_key_env} to the "
                    f"key the server was started with (vllm serve --api-key).")
        if kind == "missing":
            return (f"{where} answered 404 ({message}); check teacher_options.model ('{self.model}') and "
                    f"that base_url ends in /v1.")
        if kind == "retried":
            return f"{where} failed with HTTP {code} after {self.max_retries} retries: {message}."
        too_many = _TOO_MANY.search(message)
        if too_many:  # vLLM caps log-probs per position at startup (--max-logprobs)
            asked = top_k or int(too_many.group(1))
            return (f"{where} allows at most {too_many.group(2)} log-probabilities per position but "
                    f"top_k={asked} needs {asked}; restart it with --max-logprobs {asked} (or lower top_k).")
        return f"{where} rejected a request: {message}."

    def _map(self, fn: Callable[[Endpoint[Any], T], R], items: Sequence[T], desc: str) -> list[R]:
        """``fn`` over ``items``, ``concurrency`` requests in flight per server, in order."""
        assert self.pool is not None
        return self.pool.map(fn, items, desc, self.show_progress and len(items) > 1)

    # -- teacher --------------------------------------------------------------

    def generate(self, prefixes: Sequence[Prefix], sampling: SamplingConfig) -> list[list[Sample]]:
        if self.pool is None:
            raise RuntimeError("VLLMServerTeacher.setup() was not called")

        def one(endpoint: Endpoint[Any], item: tuple[int, Prefix]) -> list[Sample]:
            i, prefix = item
            response = self._call(endpoint.url, lambda: endpoint.client.completions.create(
                model=self.model, prompt=list(prefix.ids), n=sampling.n,
                temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, seed=request_seed(sampling.seed, i, sampling.n),
                presence_penalty=0.0, frequency_penalty=0.0,
                logprobs=0,  # only for the "token_id:N" tokens of servers without return_token_ids
                extra_body={
                    **_PLAIN_SAMPLING, **(getattr(sampling, "extras", None) or {}), "min_tokens": sampling.min_new_tokens,
                    "stop_token_ids": list(sampling.stop_ids), "return_token_ids": True,
                    "return_tokens_as_token_ids": True, "add_special_tokens": False,
                },
            ))
            choices = sorted(_as_dict(response).get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != sampling.n:
                raise VLLMResponseError(f"The vLLM server returned {len(choices)} completions where {sampling.n} were asked for.")
            return [to_sample(_generated_ids(c), c.get("finish_reason"), c.get("stop_reason"), sampling.stop_ids)
                    for c in choices]

        return self._map(one, list(enumerate(prefixes)), "generate")

    def score(self, trajectories: Sequence[Trajectory], *, top_k: int | None, full: bool,
              side: Side = "prompted") -> list[Targets]:
        plain = without_engine(self.name, trajectories, top_k, full)
        if plain is not None:
            return plain
        if self.pool is None:
            raise RuntimeError("VLLMServerTeacher.setup() was not called")

        def one(endpoint: Endpoint[Any], trajectory: Trajectory) -> Targets:
            ids, prefix_len = response_prompt(trajectory, side)
            response = self._call(endpoint.url, lambda: endpoint.client.completions.create(
                model=self.model, prompt=list(ids), max_tokens=1, temperature=1.0,
                extra_body={"prompt_logprobs": top_k, "return_tokens_as_token_ids": True,
                            "add_special_tokens": False},
            ), top_k=top_k)
            data = _as_dict(response)
            choices = data.get("choices") or [{}]
            logprobs = choices[0].get("prompt_logprobs") or data.get("prompt_logprobs")
            if logprobs is None:
                raise VLLMResponseError(
                    f"The server at {endpoint.url} returned no prompt_logprobs; the vllm-server teacher "
                    f"needs a vLLM OpenAI-compatible server (prompt_logprobs is a vLLM extension)."
                )
            return prompt_targets(logprobs, prefix_len, trajectory.response_ids, top_k)

        return self._map(one, list(trajectories), "score")

    def close(self) -> None:
        if self._own_client and self.pool is not None:
            for endpoint in self.pool.endpoints:
                endpoint.client.close()
            self.client = None
            self.pool = None


def _generated_ids(choice: Mapping[str, Any]) -> list[int]:
    """Generated token ids of one completion choice."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return [int(t) for t in ids]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens is None:
        raise VLLMResponseError(
            "The server returned neither token_ids nor logprobs.tokens; the vllm-server teacher needs a "
            "vLLM OpenAI-compatible server."
        )
    return [parse_token_id(t) for t in tokens]
